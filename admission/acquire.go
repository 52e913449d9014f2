package admission

import (
	"context"
	"fmt"
	"time"
)

func (c *Controller) shed(l Lane, err error, retry time.Duration) *ShedError {
	c.count(l, DecisionOf(err))
	return &ShedError{Lane: l, Err: err, RetryAfter: retry}
}

// Acquire admits r, waiting in its lane's queue if needed.
//
// It returns a *ShedError wrapping ErrRateLimited, ErrQueueFull,
// ErrWaitTooLong, ErrQueueTimeout or ErrClosed when the request is refused,
// and an error wrapping the context's error when ctx ends first; the caller
// then must not forward the request. A cancelled caller leaves the queue at
// once.
func (c *Controller) Acquire(ctx context.Context, r Request) (*Permit, error) {
	l := r.Lane
	if c.closed.Load() {
		return nil, c.shed(l, ErrClosed, time.Second)
	}
	now := c.clock.Now()
	r.Arrival = c.arrival(&r, now)
	var tok tokens
	// A login back with a good ticket paid its token on its first try.
	if l == Login && r.Ticket == 0 {
		var wait time.Duration
		if tok, wait = c.buckets.Load().take(now, r.Client); wait > 0 {
			return nil, c.shed(l, ErrRateLimited, wait)
		}
	}
	d := delta(&r)
	for {
		// Limits are read afresh each try, so an arrival racing a
		// Reconfigure that shrinks them is judged by the new ones.
		lim := c.limits.Load()
		s := c.state.Load()
		if queuedOf(s) != 0 || !canAdmitReq(s, lim, &r) {
			break
		}
		if c.state.CompareAndSwap(s, s+d) {
			c.count(l, Admitted)
			c.redeem(&r, now)
			return c.newPermit(&r, now, 0), nil
		}
	}
	if c.beforeSlow != nil {
		c.beforeSlow()
	}
	return c.acquireSlow(ctx, &r, now, tok)
}

// ahead is how many waiters are served before a new arrival of r: its own
// queue, and for an anonymous request also every authenticated one.
func (c *Controller) ahead(r *Request) int {
	if r.Lane == Login {
		return c.queues[Login].countBefore(r.Arrival)
	}
	n := c.queues[r.queue()].len
	if r.anonymous() {
		n += c.queues[Core].len
	}
	return n
}

// arrival is when r ranks in its line: for a login with a good ticket,
// the ticket's first arrival; otherwise now. A ticket refused here
// (already in line, already used) is dropped from r.
func (c *Controller) arrival(r *Request, now time.Time) time.Time {
	if r.Lane != Login || r.Ticket == 0 || r.Arrival.IsZero() || r.Arrival.After(now) {
		r.Ticket = 0
		return now
	}
	arrival, id := c.room.arrive(r.Ticket, r.Arrival, now)
	r.Ticket = id
	return arrival
}

// redeem marks an admitted login's ticket used.
func (c *Controller) redeem(r *Request, now time.Time) {
	if r.Ticket != 0 {
		c.room.leave(r.Ticket, true, now.Add(placeGrace(c.limits.Load().Lane[Login].QueueTimeout)))
	}
}

// place is what a login sent away keeps: its rank, position and expected
// turn. Callers hold mu.
func (c *Controller) place(r *Request, s uint64, now time.Time) *Place {
	ahead := c.queues[Login].countBefore(r.Arrival) + c.awayAhead(r)
	wait := c.loginWait(ahead, s, now)
	p := c.room.keep(Place{
		ID: r.Ticket, Arrival: r.Arrival, Position: ahead + 1, Wait: wait,
		Until: now.Add(wait + placeGrace(c.limits.Load().Lane[Login].QueueTimeout)),
	})
	return &p
}

func (c *Controller) awayAhead(r *Request) int {
	c.room.mu.Lock()
	defer c.room.mu.Unlock()
	c.room.purge(c.clock.Now())
	return c.room.awayAhead(r.Arrival, r.Ticket)
}

// shedLogin refuses a login, keeping its place in line.
func (c *Controller) shedLogin(r *Request, err error, s uint64, now time.Time) *ShedError {
	p := c.keepPlace(r, s, now)
	c.count(Login, DecisionOf(err))
	return &ShedError{Lane: Login, Err: err, RetryAfter: p.Wait, Place: p}
}

// keepPlace keeps a login's place in line for its return, counting no
// decision: the caller counts the one that happened.
func (c *Controller) keepPlace(r *Request, s uint64, now time.Time) *Place {
	if r.Ticket != 0 {
		c.room.leave(r.Ticket, false, time.Time{})
	}
	return c.place(r, s, now)
}

func (c *Controller) acquireSlow(ctx context.Context, r *Request, now time.Time, tok tokens) (*Permit, error) {
	l := r.Lane
	c.mu.Lock()
	if c.closed.Load() {
		// Close ran between the check in Acquire and here; it has already
		// emptied the queues and would not see this request.
		c.mu.Unlock()
		tok.refund(now)
		if r.Ticket != 0 {
			c.room.leave(r.Ticket, false, time.Time{})
		}
		return nil, c.shed(l, ErrClosed, time.Second)
	}
	lim := c.limits.Load()
	ll := lim.Lane[l]
	q := &c.queues[r.queue()]
	d := delta(r)
	var deadline time.Time
	for {
		s := c.state.Load()
		if c.ahead(r) == 0 && canAdmitReq(s, lim, r) {
			if c.state.CompareAndSwap(s, s+d) {
				c.mu.Unlock()
				c.count(l, Admitted)
				c.redeem(r, now)
				return c.newPermit(r, now, 0), nil
			}
			continue
		}
		// The queued count has 16 bits; queues kept from before a
		// Reconfigure could otherwise push it past them.
		if q.len >= ll.Queue || ll.QueueTimeout <= 0 || queuedOf(s) >= maxQueued {
			if l == Login {
				se := c.shedLogin(r, ErrQueueFull, s, now)
				c.mu.Unlock()
				tok.refund(now)
				return nil, se
			}
			retry := c.expectedWait(l, c.ahead(r)+1, s, now)
			c.mu.Unlock()
			tok.refund(now)
			return nil, c.shed(l, ErrQueueFull, retry)
		}
		var expected time.Duration
		if l == Login {
			expected = c.loginWait(c.ahead(r)+c.awayAhead(r), s, now)
		} else if inFlightOf(s, l) >= ll.Max {
			// Only a lane at its own cap drains at the pace of its own
			// slots. Below it, the lane waits for a slot any lane frees
			// (a core request every few milliseconds, while exports run
			// for seconds): judged by its own few slots, it would be
			// refused while the wait was short.
			expected = c.expectedWait(l, c.ahead(r)+1, s, now)
		}
		deadline = now.Add(ll.QueueTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if now.Add(expected).After(deadline) && !(l == Login && r.Patient) {
			if l == Login {
				se := c.shedLogin(r, ErrWaitTooLong, s, now)
				c.mu.Unlock()
				tok.refund(now)
				return nil, se
			}
			c.mu.Unlock()
			tok.refund(now)
			return nil, c.shed(l, ErrWaitTooLong, expected)
		}
		// Counting the waiter in the same word a lock-free release changes
		// means a release racing with this decision makes the swap fail, so
		// the decision to wait is never taken on a stale state.
		if c.state.CompareAndSwap(s, s+oneQueued) {
			break
		}
	}
	c.seq++
	w := &waiter{req: *r, seq: c.seq, arrival: r.Arrival, ready: make(chan struct{}, 1)}
	if l == Login {
		q.insertByArrival(w)
	} else {
		q.push(w)
	}
	c.queuedGauge(r).Add(1)
	c.dispatch(lim)
	c.mu.Unlock()

	timer := c.clock.NewTimer(deadline.Sub(now))
	defer timer.Stop()
	select {
	case <-w.ready:
	case <-timer.Chan():
	case <-ctx.Done():
	}

	c.mu.Lock()
	st := w.state
	if st == waiting {
		q.remove(w)
		c.queuedGauge(r).Add(-1)
		c.add(-int64(oneQueued))
		s := c.state.Load()
		end := c.clock.Now()
		// Read once: a caller leaving just after the timeout is then
		// either timed out or cancelled, never counted as both.
		cancelled := ctx.Err() != nil
		if l == Login {
			var se *ShedError
			switch {
			case !cancelled:
				// Timed out: the place is kept for the retry.
				se = c.shedLogin(r, ErrQueueTimeout, s, end)
			case r.Ticket != 0:
				// A ticket holder who left keeps the place too, but the
				// one decision counted is that it left.
				c.keepPlace(r, s, end)
			}
			c.mu.Unlock()
			tok.refund(end)
			if cancelled {
				c.count(l, Cancelled)
				return nil, fmt.Errorf("admission: %s lane: left the queue: %w", l, context.Cause(ctx))
			}
			return nil, se
		}
		// The estimate learns a lane's service time only as slots are
		// released: while the app hangs, it still says milliseconds. A
		// request that waited its whole timeout without a slot is not told
		// to come back sooner than it waited.
		retry := max(c.expectedWait(l, c.ahead(r)+1, s, end), end.Sub(now))
		c.mu.Unlock()
		tok.refund(end)
		if cancelled {
			c.count(l, Cancelled)
			return nil, fmt.Errorf("admission: %s lane: left the queue: %w", l, context.Cause(ctx))
		}
		return nil, c.shed(l, ErrQueueTimeout, retry)
	}
	c.mu.Unlock()
	end := c.clock.Now()
	if st == rejected {
		tok.refund(end)
		if r.Ticket != 0 {
			c.room.leave(r.Ticket, false, time.Time{})
		}
		return nil, c.shed(l, ErrClosed, time.Second)
	}
	p := c.newPermit(r, end, end.Sub(now))
	if err := ctx.Err(); err != nil {
		// The slot arrived as the caller left; hand it on rather than
		// forward a request nobody waits for.
		p.Abandon()
		if r.Ticket != 0 {
			c.room.leave(r.Ticket, false, time.Time{})
		}
		c.count(l, Cancelled)
		return nil, fmt.Errorf("admission: %s lane: left the queue: %w", l, context.Cause(ctx))
	}
	c.count(l, Admitted)
	c.redeem(r, end)
	return p, nil
}
