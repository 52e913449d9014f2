package admission

import "time"

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
	seq        uint64    // arrival order across lanes
	arrival    time.Time // rank in a login line: first arrival, kept by tickets
	state      int
	ready      chan struct{}
}

// queue is a FIFO of waiters, linked through the waiters themselves so a
// cancelled request leaves from the middle in constant time.
type queue struct {
	head, tail *waiter
	len        int
}

func (q *queue) push(w *waiter) { q.insertAfter(q.tail, w) }

// insertAfter links w in behind at, or at the head when at is nil.
func (q *queue) insertAfter(at, w *waiter) {
	if at == nil {
		w.prev, w.next = nil, q.head
	} else {
		w.prev, w.next = at, at.next
	}
	if w.next != nil {
		w.next.prev = w
	} else {
		q.tail = w
	}
	if w.prev != nil {
		w.prev.next = w
	} else {
		q.head = w
	}
	q.len++
}

// insertByArrival puts w behind every waiter that arrived no later, so a
// login back with a ticket rejoins the line at its first arrival. Most
// arrivals are the newest, so the walk from the tail is usually one step.
func (q *queue) insertByArrival(w *waiter) {
	at := q.tail
	for at != nil && at.arrival.After(w.arrival) {
		at = at.prev
	}
	q.insertAfter(at, w)
}

// countBefore counts waiters ranked ahead of an arrival at t: everyone
// who arrived no later (ties go to whoever is in line already). The queue
// is in arrival order, so it walks from the tail only past those who
// arrived later: nothing for a login arriving now, which is most of them.
func (q *queue) countBefore(t time.Time) int {
	n := q.len
	for w := q.tail; w != nil && w.arrival.After(t); w = w.prev {
		n--
	}
	return n
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
