package admission

import "time"

// Constrain sets the effective budget: the most requests the controller
// admits at once, below the configured budget, because something outside
// lanegate (the database pool's other clients) holds the rest of what the
// configured budget was sized for. A negative n, or one at or above the
// configured budget, lifts the constraint.
//
// The lanes keep their meaning under the smaller budget: reservations
// shrink in proportion, but every lane that has one keeps at least one
// slot while n has one for each, so a login still gets in while others
// hold most of the pool; no lane's max exceeds n. Below that, nothing is
// reserved and the few slots go in turn to whoever waits. Zero admits
// nothing: requests queue in lanegate, where waiting holds no database
// connection, and are shed with Retry-After when their wait runs out.
//
// Nothing in flight is dropped; when n shrinks below what is in flight,
// new arrivals wait until enough drain, and when it grows, waiters are
// admitted at once. Constrain takes the controller's lock: call it from a
// control loop, not per request.
func (c *Controller) Constrain(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	configured := c.configured.Load()
	if n < 0 || n >= configured.Budget {
		n = -1
	}
	if n == c.ceiling {
		return
	}
	c.ceiling = n
	eff := c.effective(configured)
	c.limits.Store(&eff)
	c.dispatch(&eff)
}

// Share is one replica's part of limits shared by a fleet: per lane, the
// most it may hold and its part of the lane's reservation. The fleet
// coordinator hands each replica one, so that the replicas together never
// admit more than one lanegate alone would.
type Share struct {
	// Lane holds each lane's share, indexed by Lane.
	Lane [numLanes]LaneShare
	// Budget, when not zero, caps the sum of the lanes' maxima; negative
	// means nothing at all.
	Budget int
	// Login is the replica's part of the fleet's login rate, when the
	// fleet shares one (Login.Rate above 0): the global login bucket runs
	// at it instead of the configured rate. The fleet hands each replica a
	// part in proportion to the logins arriving there, so the parts add
	// up to the configured rate.
	Login RateLimit
	// Members, when above one, divides the per-client login rate: where a
	// client's logins land is not known without asking Redis on every
	// one, so each replica allows a client its part, and the rate holds
	// fleet-wide however the balancer spreads them.
	Members int
	// LoginRate is the fleet's login completion rate per second, the sum
	// of its members' measured rates; when above zero the login line's
	// estimates use it, since the places ahead of a login are counted
	// fleet-wide.
	LoginRate float64
	// LoginBefore, when not zero, holds back every login that arrived
	// after it, even with a login slot free: an older login waits at
	// another replica of the fleet, and the fleet's next renewal moves the
	// slot there. Logins still rank and queue as usual.
	LoginBefore time.Time
}

// LaneShare is a replica's part of one lane.
type LaneShare struct {
	// Max is the most requests of the lane the replica may hold.
	Max int
	// Reserved is its part of the lane's reservation, at most Max.
	Reserved int
}

// SetShare narrows the configured limits to a fleet share: each lane's max
// and reservation become the share's (never above the configured ones), and
// the budget their sum. A nil share lifts it. Like Constrain, it drops
// nothing in flight, admits waiters at once when it grows, and takes the
// controller's lock: call it from the coordinator's loop. An effective
// budget set by Constrain applies on top.
func (c *Controller) SetShare(sh *Share) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.share = sh
	c.fleetShare.Store(sh)
	var before int64
	if sh != nil && !sh.LoginBefore.IsZero() {
		before = sh.LoginBefore.UnixMicro()
	}
	c.loginBefore.Store(before)
	eff := c.effective(c.configured.Load())
	if b, err := c.buckets.Load().reconfigure(c.clock.Now(), eff); err == nil {
		// It fails only for a client cache of no size, which the
		// configured limits were validated against already.
		c.buckets.Store(b)
	}
	c.limits.Store(&eff)
	c.dispatch(&eff)
}

// turnCame reports whether r may be admitted as far as the fleet's line
// says: any request but a login, or a login no later than the oldest
// waiting at another replica (see Share.LoginBefore).
func (c *Controller) turnCame(r *Request) bool {
	if r.Lane != Login {
		return true
	}
	b := c.loginBefore.Load()
	return b == 0 || r.Arrival.UnixMicro() <= b
}

// fleetLoginRate is the fleet's login completion rate the share carries,
// zero outside a fleet. Callers hold mu, or read a stale value harmlessly:
// it feeds an estimate.
func (c *Controller) fleetLoginRate() float64 {
	if sh := c.fleetShare.Load(); sh != nil {
		return sh.LoginRate
	}
	return 0
}

// Freeze holds every lane to what it has in flight now, for the moment a
// fleet coordinator renews its lease: the fleet may hand the rest of this
// replica's share to others before the answer arrives, so until SetShare
// gives the new share, freed slots are not refilled. It returns each
// lane's in-flight count, read after the hold took effect, and its queued
// count (anonymous core requests included), the demand to report.
//
// An admission decided against the previous limits in the same instant
// may still land after the hold; the next renewal reports it.
func (c *Controller) Freeze() (inFlight, queued [numLanes]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	eff := c.limits.Load()
	s := c.state.Load()
	sh := &Share{}
	for _, l := range Lanes() {
		m := min(eff.Lane[l].Max, inFlightOf(s, l))
		sh.Lane[l] = LaneShare{Max: m, Reserved: min(eff.Lane[l].Reserved, m)}
		sh.Budget += m
	}
	if sh.Budget == 0 {
		sh.Budget = -1 // nothing at all, not "the lanes' sum"
	}
	if old := c.share; old != nil {
		sh.Login, sh.Members, sh.LoginRate = old.Login, old.Members, old.LoginRate
	}
	c.share = sh
	frozen := c.effective(c.configured.Load())
	c.limits.Store(&frozen)
	return c.Demand()
}

// Demand returns each lane's in-flight and queued counts (anonymous core
// requests included), as Freeze does, without holding anything.
func (c *Controller) Demand() (inFlight, queued [numLanes]int) {
	s := c.state.Load()
	for _, l := range Lanes() {
		inFlight[l] = inFlightOf(s, l)
		queued[l] = int(c.lanes[l].queued.Load())
	}
	queued[Core] += int(c.anonQueued.Load())
	return inFlight, queued
}

// effective is lim narrowed by the share and then the ceiling. Callers hold
// mu.
func (c *Controller) effective(lim *Limits) Limits {
	return constrain(shared(*lim, c.share), c.ceiling)
}

// shared returns lim narrowed to sh.
func shared(lim Limits, sh *Share) Limits {
	if sh == nil {
		return lim
	}
	out := lim
	out.Budget = 0
	for _, l := range Lanes() {
		ll := &out.Lane[l]
		ll.Max = max(min(ll.Max, sh.Lane[l].Max), 0)
		ll.Reserved = max(min(sh.Lane[l].Reserved, ll.Reserved, ll.Max), 0)
		out.Budget += ll.Max
	}
	out.Budget = min(out.Budget, lim.Budget)
	if sh.Budget != 0 {
		out.Budget = max(min(out.Budget, sh.Budget), 0)
	}
	if lim.AnonMax > 0 {
		// Zero would mean no cap; with no core slot nothing is admitted
		// anyway.
		out.AnonMax = max(1, min(lim.AnonMax, out.Lane[Core].Max))
	}
	if lim.LoginRate.Enabled() && sh.Login.Enabled() {
		out.LoginRate = RateLimit{Rate: min(sh.Login.Rate, lim.LoginRate.Rate), Burst: max(1, min(sh.Login.Burst, lim.LoginRate.Burst))}
	}
	if lim.LoginPerClient.Enabled() && sh.Members > 1 {
		out.LoginPerClient.Rate /= float64(sh.Members)
		out.LoginPerClient.Burst = max(1, out.LoginPerClient.Burst/sh.Members)
	}
	return out
}

// StaticBudget returns the configured budget, which Constrain never
// exceeds.
func (c *Controller) StaticBudget() int { return c.configured.Load().Budget }

// InFlight returns the number of requests holding a slot now, across all
// lanes: one atomic read, for control loops that compare it with what the
// database pool says.
func (c *Controller) InFlight() int { return totalOf(c.state.Load()) }

// Narrowed returns l narrowed to a budget of n by the rules Constrain
// follows: reservations in proportion, each lane that has one keeping one
// while n allows, maxima capped at n. A negative n, or one at or above
// l.Budget, returns l. A fleet narrows its shared limits with it.
func (l Limits) Narrowed(n int) Limits { return constrain(l, n) }

// constrain returns lim narrowed to a budget of n; a negative n, or one at
// or above lim.Budget, returns lim.
func constrain(lim Limits, n int) Limits {
	if n < 0 || n >= lim.Budget {
		return lim
	}
	out := lim
	out.Budget = n
	reserving, left := 0, n
	for _, l := range Lanes() {
		r := lim.Lane[l].Reserved * n / lim.Budget
		out.Lane[l].Reserved = r
		left -= r
		if lim.Lane[l].Reserved > 0 {
			reserving++
		}
	}
	switch {
	case n < reserving:
		// Too few slots for each lane to keep one: reserving the few
		// there are for one lane would shut the others out entirely.
		// Unreserved, they go to whoever has waited for them.
		for _, l := range Lanes() {
			out.Lane[l].Reserved = 0
		}
	default:
		// Floors of proportional shares can leave a lane with nothing;
		// its reservation is what it was there for.
		for _, l := range Lanes() {
			if left > 0 && lim.Lane[l].Reserved > 0 && out.Lane[l].Reserved == 0 {
				out.Lane[l].Reserved = 1
				left--
			}
		}
	}
	for _, l := range Lanes() {
		ll := &out.Lane[l]
		ll.Max = min(ll.Max, n)
		ll.Reserved = min(ll.Reserved, ll.Max)
	}
	if lim.AnonMax > 0 {
		// Zero would mean no cap; with no slot at all nothing is
		// admitted anyway.
		out.AnonMax = max(1, min(lim.AnonMax*n/lim.Budget, out.Lane[Core].Max))
	}
	return out
}
