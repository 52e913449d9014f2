package admission

import (
	"time"
)

// Pass counts a request forwarded without admission control (mode off) so
// in-flight gauges stay truthful and a switch back to enforce starts from
// the real load. It never blocks and never refuses.
func (c *Controller) Pass(r Request) *Permit {
	c.count(r.Lane, Passed)
	return c.force(&r)
}

// Shadow computes what Acquire would decide now without waiting or
// refusing: it returns the decision enforce mode would have taken and a
// permit for the request, which is forwarded regardless. A request that
// would have queued is reported as ShadowQueued; shadow mode has no real
// queue, so a lane's requests beyond what it could have admitted stand in
// for the queue ahead.
func (c *Controller) Shadow(r Request) (Decision, *Permit) {
	l := r.Lane
	lim := c.limits.Load()
	now := c.clock.Now()
	d := ShadowAdmitted
	var tok tokens
	if l == Login {
		var wait time.Duration
		if tok, wait = c.buckets.Load().take(now, r.Client); wait > 0 {
			d = ShadowRateLimited
		}
	}
	if d == ShadowAdmitted {
		s := c.state.Load()
		if !canAdmitReq(s, lim, &r) {
			ll := lim.Lane[l]
			// Requests beyond the lane's max or beyond the budget would have
			// been queued; whichever overshoot is larger is the queue ahead.
			ahead := max(inFlightOf(s, l)-ll.Max, totalOf(s)-lim.Budget, 0)
			switch {
			case ahead >= ll.Queue || ll.QueueTimeout <= 0:
				d = ShadowQueueFull
			case inFlightOf(s, l) >= ll.Max && c.expectedWait(l, ahead+1, s, now) > ll.QueueTimeout:
				d = ShadowWaitTooLong
			default:
				d = ShadowQueued
			}
			if d != ShadowQueued {
				tok.refund(now)
			}
		}
	}
	c.count(l, d)
	return d, c.force(&r)
}

// force takes a slot whatever the limits say. A request whose count field
// is full is forwarded uncounted rather than carried into its neighbour.
func (c *Controller) force(r *Request) *Permit {
	p := &Permit{c: c, lane: r.Lane, start: c.clock.Now()}
	d := delta(r)
	for {
		s := c.state.Load()
		if inFlightOf(s, r.Lane) >= fieldMask || (r.anonymous() && anonOf(s) >= fieldMask) {
			return p
		}
		// An increase needs no dispatch, so unlike a release it may
		// race the mutex holders: their swaps fail and they look again.
		if c.state.CompareAndSwap(s, s+d) {
			p.delta = d
			c.lanes[r.Lane].hold(c.sinceEpoch(p.start))
			return p
		}
	}
}
