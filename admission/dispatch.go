package admission

import (
	"sync/atomic"
)

// queuedGauge is the counter of waiters r is counted in.
func (c *Controller) queuedGauge(r *Request) *atomic.Int64 {
	if r.anonymous() {
		return &c.anonQueued
	}
	return &c.lanes[r.Lane].queued
}

// head is the waiter lane l would admit next in state s, or nil: in the
// core lane an authenticated waiter always goes before an anonymous one,
// and an anonymous one only while anonymous requests are under their cap.
func (c *Controller) head(s uint64, lim *Limits, l Lane) *waiter {
	if w := c.queues[l].head; w != nil {
		return w
	}
	if l == Core {
		if w := c.queues[anonQueue].head; w != nil && canAdmitReq(s, lim, &w.req) {
			return w
		}
	}
	return nil
}

// dispatch hands free slots to waiters: first to lanes still below their
// reservation, then to any lane that may borrow, oldest request first.
// Callers hold mu.
func (c *Controller) dispatch(lim *Limits) {
	for {
		s := c.state.Load()
		var best *waiter
		bestReserved := false
		for _, l := range Lanes() {
			if !canAdmit(s, lim, l) {
				continue
			}
			w := c.head(s, lim, l)
			if w == nil || !c.turnCame(&w.req) {
				continue
			}
			reserved := inFlightOf(s, l) < lim.Lane[l].Reserved
			if best == nil || (reserved && !bestReserved) || (reserved == bestReserved && w.seq < best.seq) {
				best, bestReserved = w, reserved
			}
		}
		if best == nil {
			return
		}
		if !c.state.CompareAndSwap(s, s+delta(&best.req)-oneQueued) {
			continue
		}
		c.queues[best.req.queue()].remove(best)
		c.queuedGauge(&best.req).Add(-1)
		best.state = granted
		best.ready <- struct{}{}
	}
}

// Close refuses every queued and future request with ErrClosed, for a
// shutdown that answers waiters at once instead of letting them time out.
// Requests in flight keep their slots.
func (c *Controller) Close() {
	c.closed.Store(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.queues {
		q := &c.queues[i]
		for q.head != nil {
			w := q.head
			q.remove(w)
			c.queuedGauge(&w.req).Add(-1)
			c.add(-int64(oneQueued))
			w.state = rejected
			w.ready <- struct{}{}
		}
	}
}
