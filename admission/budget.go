package admission

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
	eff := constrain(*configured, n)
	c.limits.Store(&eff)
	c.dispatch(&eff)
}

// StaticBudget returns the configured budget, which Constrain never
// exceeds.
func (c *Controller) StaticBudget() int { return c.configured.Load().Budget }

// InFlight returns the number of requests holding a slot now, across all
// lanes: one atomic read, for control loops that compare it with what the
// database pool says.
func (c *Controller) InFlight() int { return totalOf(c.state.Load()) }

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
