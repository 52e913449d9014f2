package admission

// waiter states, guarded by Controller.mu.
const (
	waiting = iota
	granted
	rejected
)

// waiter is one queued request. The controller signals ready once, after
// setting state, when the request is granted a slot or rejected.
type waiter struct {
	prev, next *waiter
	req        Request
	seq        uint64 // arrival order across lanes
	state      int
	ready      chan struct{}
}

// queue is a FIFO of waiters, linked through the waiters themselves so a
// cancelled request leaves from the middle in constant time.
type queue struct {
	head, tail *waiter
	len        int
}

func (q *queue) push(w *waiter) {
	w.prev, w.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.len++
}

func (q *queue) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next = nil, nil
	q.len--
}
