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
	// A login back with a good ticket paid its token when its place was
	// made.
	if l == Login && (r.Ticket == 0 || r.Fleet != nil && r.Fleet.Fresh) {
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
		if queuedOf(s) != 0 || !canAdmitReq(s, lim, &r) || !c.turnCame(&r) {
			break
		}
		if c.state.CompareAndSwap(s, s+d) {
			c.count(l, Admitted)
			c.redeem(&r)
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
	if r.Lane == Login && r.Fleet != nil {
		// The fleet's clock ranks, and may run a little ahead of this
		// replica's: only the age bound applies.
		r.fleetAt = now
		if now.Sub(r.Fleet.Arrival) > MaxPlaceAge {
			r.Fleet, r.Ticket = nil, 0
			return now
		}
		arrival, id := c.room.arrive(r.Fleet.ID, r.Fleet.Arrival, now)
		r.Ticket = id
		return arrival
	}
	if r.Lane != Login || r.Ticket == 0 || !placeUsable(r.Arrival, now) {
		r.Ticket = 0
		return now
	}
	arrival, id := c.room.arrive(r.Ticket, r.Arrival, now)
	r.Ticket = id
	return arrival
}

// redeem marks an admitted login's ticket used. The record lasts as long
// as any ticket for the place could be shown: a ticket's expiry is one
// place's Until, but the place may have been renewed with later ones, and
// no ticket ranks anyone once its first arrival is MaxPlaceAge old.
func (c *Controller) redeem(r *Request) {
	if r.Ticket != 0 {
		c.room.leave(r.Ticket, true, r.Arrival.Add(MaxPlaceAge))
	}
}

// place is what a login sent away keeps: its rank, position and expected
// turn; page says the place was made by the waiting page. Callers hold
// mu.
func (c *Controller) place(r *Request, s uint64, now time.Time, page bool) *Place {
	ahead := c.loginAhead(r, now)
	wait := c.room.promise(r.Arrival, now, c.loginWait(ahead, s, now))
	p := c.room.keep(Place{
		ID: r.Ticket, Arrival: r.Arrival, Position: ahead + 1, Wait: wait,
		Until: placeUntil(r.Arrival, now.Add(wait+placeGrace(c.limits.Load().Lane[Login].QueueTimeout))),
	}, r.Client, page)
	return &p
}

// loginAhead counts the logins ahead of r in line at now: waiting here or
// away, or, in a fleet that shares the line, as many as the fleet counted
// on r's arrival less those it has completed since, whichever is more.
// Callers hold mu.
func (c *Controller) loginAhead(r *Request, now time.Time) int {
	ahead := c.queues[Login].countBefore(r.Arrival) + c.awayAhead(r)
	if r.Fleet != nil {
		gone := int(c.fleetLoginRate() * now.Sub(r.fleetAt).Seconds())
		ahead = max(ahead, r.Fleet.Ahead-gone)
	}
	return ahead
}

func (c *Controller) awayAhead(r *Request) int {
	c.room.mu.Lock()
	defer c.room.mu.Unlock()
	c.room.purge(c.clock.Now())
	return c.room.awayAhead(r.Arrival, r.Ticket)
}

// keepPlace keeps a login's place in line for its return, counting no
// decision: the caller counts the one that happened.
func (c *Controller) keepPlace(r *Request, s uint64, now time.Time) *Place {
	page := false
	if r.Ticket != 0 {
		page = c.room.leave(r.Ticket, false, time.Time{})
	}
	return c.place(r, s, now, page)
}

// outcome is how a request leaves acquireSlow: admitted, shed or
// cancelled. finish acts on it.
type outcome struct {
	// at is when the request left. A signalled request, granted a slot by
	// dispatch or rejected by Close while it waited, reads the clock
	// instead once mu is released.
	at        time.Time
	signalled bool
	// err is why the request was shed, and retry its Retry-After; err is
	// nil when the request was admitted or cancelled.
	err   error
	retry time.Duration
	// place is the place in line kept for a login that was sent away or
	// that left holding a ticket.
	place     *Place
	cancelled bool // the caller left the queue
}

func (o *outcome) admitted() bool { return o.err == nil && !o.cancelled }

// acquireSlow is Acquire once the lock-free attempt has failed: under mu,
// r is admitted or refused at once, or queued until dispatch hands it a
// slot, its deadline passes or its caller leaves. Every outcome leaves
// through finish, which releases mu.
func (c *Controller) acquireSlow(ctx context.Context, r *Request, now time.Time, tok tokens) (*Permit, error) {
	c.mu.Lock()
	o, w, deadline := c.admitOrQueue(ctx, r, now)
	if w != nil {
		c.mu.Unlock()
		timer := c.clock.NewTimer(deadline.Sub(now))
		defer timer.Stop()
		select {
		case <-w.ready:
		case <-timer.Chan():
		case <-ctx.Done():
		}
		c.mu.Lock()
		o = c.leaveQueue(ctx, r, w, now)
	}
	return c.finish(ctx, r, tok, now, o)
}

// admitOrQueue decides, with mu held, what becomes of r on arrival: it
// returns the outcome of a request admitted or refused at once, or the
// waiter that queues r and when its wait ends.
func (c *Controller) admitOrQueue(ctx context.Context, r *Request, now time.Time) (outcome, *waiter, time.Time) {
	if c.closed.Load() {
		// Close ran between the check in Acquire and here; it has already
		// emptied the queues and would not see this request.
		return outcome{at: now, err: ErrClosed, retry: time.Second}, nil, time.Time{}
	}
	lim := c.limits.Load()
	deadline := now.Add(lim.Lane[r.Lane].QueueTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(deadline) {
		deadline = cd
	}
	d := delta(r)
	for {
		s := c.state.Load()
		if c.ahead(r) == 0 && canAdmitReq(s, lim, r) && c.turnCame(r) {
			if c.state.CompareAndSwap(s, s+d) {
				return outcome{at: now}, nil, time.Time{}
			}
			continue
		}
		if o, refused := c.refuseEarly(r, s, lim, now, deadline); refused {
			return o, nil, time.Time{}
		}
		// Counting the waiter in the same word a lock-free release changes
		// means a release racing with this decision makes the swap fail, so
		// the decision to wait is never taken on a stale state.
		if c.state.CompareAndSwap(s, s+oneQueued) {
			return outcome{}, c.enqueue(r, lim), deadline
		}
	}
}

// refuseEarly decides, with mu held, whether r is refused rather than
// queued in state s: its queue is full, or the wait it expects ends after
// its deadline.
func (c *Controller) refuseEarly(r *Request, s uint64, lim *Limits, now, deadline time.Time) (outcome, bool) {
	l, ll := r.Lane, lim.Lane[r.Lane]
	// The queued count has 16 bits; queues kept from before a
	// Reconfigure could otherwise push it past them. A lane configured
	// with no slots at all is closed: waiting could never end in a slot.
	// (One narrowed to none by Constrain is not: its slots come back.)
	if c.queues[r.queue()].len >= ll.Queue || ll.QueueTimeout <= 0 || queuedOf(s) >= maxQueued ||
		c.configured.Load().Lane[l].Max == 0 {
		if l == Login {
			return c.shedLogin(r, ErrQueueFull, s, now), true
		}
		return outcome{at: now, err: ErrQueueFull, retry: c.expectedWait(l, c.ahead(r)+1, s, now)}, true
	}
	expected := c.queueWait(r, s, ll, now)
	if now.Add(expected).After(deadline) && !(l == Login && r.Patient) {
		if l == Login {
			return c.shedLogin(r, ErrWaitTooLong, s, now), true
		}
		return outcome{at: now, err: ErrWaitTooLong, retry: expected}, true
	}
	return outcome{}, false
}

// queueWait is the wait r expects if it queues in state s. Callers hold
// mu.
func (c *Controller) queueWait(r *Request, s uint64, ll LaneLimits, now time.Time) time.Duration {
	switch {
	case r.Lane == Login:
		return c.loginWait(c.loginAhead(r, now), s, now)
	case inFlightOf(s, r.Lane) >= ll.Max:
		// Only a lane at its own cap drains at the pace of its own
		// slots. Below it, the lane waits for a slot any lane frees
		// (a core request every few milliseconds, while exports run
		// for seconds): judged by its own few slots, it would be
		// refused while the wait was short.
		return c.expectedWait(r.Lane, c.ahead(r)+1, s, now)
	}
	return 0
}

// enqueue queues r, already counted in the state word, and dispatches.
// Callers hold mu.
func (c *Controller) enqueue(r *Request, lim *Limits) *waiter {
	c.seq++
	w := &waiter{req: *r, seq: c.seq, arrival: r.Arrival, ready: make(chan struct{}, 1)}
	if q := &c.queues[r.queue()]; r.Lane == Login {
		q.insertByArrival(w)
	} else {
		q.push(w)
	}
	c.queuedGauge(r).Add(1)
	c.dispatch(lim)
	return w
}

// leaveQueue decides, with mu held, the outcome of r, queued since since,
// once its waiter w stops waiting: granted a slot or rejected, both
// signalled and out of the queue already; or timed out or cancelled, when
// w leaves the queue here.
func (c *Controller) leaveQueue(ctx context.Context, r *Request, w *waiter, since time.Time) outcome {
	switch w.state {
	case granted:
		return outcome{signalled: true}
	case rejected:
		return outcome{signalled: true, err: ErrClosed, retry: time.Second}
	}
	c.queues[r.queue()].remove(w)
	c.queuedGauge(r).Add(-1)
	c.add(-int64(oneQueued))
	s := c.state.Load()
	end := c.clock.Now()
	// Read once: a caller leaving just after the timeout is then
	// either timed out or cancelled, never counted as both.
	switch cancelled := ctx.Err() != nil; {
	case cancelled && r.Ticket != 0:
		// A ticket holder (a login) who left keeps the place too, but
		// the one decision counted is that it left.
		return outcome{at: end, cancelled: true, place: c.keepPlace(r, s, end)}
	case cancelled:
		return outcome{at: end, cancelled: true}
	case r.Lane == Login:
		// Timed out: the place is kept for the retry.
		return c.shedLogin(r, ErrQueueTimeout, s, end)
	}
	// The estimate learns a lane's service time only as slots are
	// released: while the app hangs, it still says milliseconds. A
	// request that waited its whole timeout without a slot is not told
	// to come back sooner than it waited.
	retry := max(c.expectedWait(r.Lane, c.ahead(r)+1, s, end), end.Sub(since))
	return outcome{at: end, err: ErrQueueTimeout, retry: retry}
}

// shedLogin refuses a login at now, keeping its place in line: the wait
// the place expects is its Retry-After. Callers hold mu.
func (c *Controller) shedLogin(r *Request, err error, s uint64, now time.Time) outcome {
	p := c.keepPlace(r, s, now)
	return outcome{at: now, err: err, retry: p.Wait, place: p}
}

// finish is the one way out of acquireSlow. Called with mu held, it
// releases mu and then acts on o for r, which arrived at since: an
// admitted request takes its permit and uses up its ticket; any other
// gets its login tokens back, unless a granted slot was handed on or the
// tokens stay with a place it will come back with, and its ticket, unless
// kept with its place, leaves the line. Either way one decision is
// counted.
func (c *Controller) finish(ctx context.Context, r *Request, tok tokens, since time.Time, o outcome) (*Permit, error) {
	// A refund is dated by a clock read here, under mu, never by the
	// arrival's reading from before the lock: logins that took tokens
	// while this one waited for mu have moved the buckets' clocks on, and
	// a refund dated earlier would set them back, so the tokens of the
	// time between would be made twice.
	refund := !o.admitted() && !tok.none() && !(o.place != nil && r.Returns)
	var refundAt time.Time
	if refund {
		refundAt = c.clock.Now()
	}
	c.mu.Unlock()
	l, at := r.Lane, o.at
	if o.signalled {
		at = c.clock.Now()
	}
	if o.admitted() {
		p := c.newPermit(r, at, at.Sub(since))
		if !o.signalled || ctx.Err() == nil {
			c.count(l, Admitted)
			c.redeem(r)
			return p, nil
		}
		// The slot arrived as the caller left; hand it on rather than
		// forward a request nobody waits for.
		p.Abandon()
		o.cancelled = true
	} else if refund {
		tok.refund(refundAt)
	}
	if o.place == nil && r.Ticket != 0 {
		c.room.leave(r.Ticket, false, time.Time{})
	}
	if o.cancelled {
		c.count(l, Cancelled)
		return nil, fmt.Errorf("admission: %s lane: left the queue: %w", l, context.Cause(ctx))
	}
	c.count(l, DecisionOf(o.err))
	return nil, &ShedError{Lane: l, Err: o.err, RetryAfter: o.retry, Place: o.place}
}
