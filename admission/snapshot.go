package admission

import "time"

// LaneSnapshot is one lane's limits and counters at a moment.
type LaneSnapshot struct {
	Lane Lane
	LaneLimits
	InFlight int
	Queued   int
	// ServiceTime is the moving average of how long the lane's requests
	// hold a slot; it drives early rejection and Retry-After estimates.
	ServiceTime time.Duration
	// Decisions counts requests by outcome since start, indexed by
	// Decision.
	Decisions [numDecisions]uint64
}

// Snapshot is the controller's state at a moment, for status pages and
// metrics. In-flight counts come from one atomic read and are consistent
// with each other; queue lengths and counters are read separately.
type Snapshot struct {
	// Budget is the budget in force, the effective one while Constrain
	// narrows it; StaticBudget is the configured one.
	Budget       int
	StaticBudget int
	InFlight     int
	Lanes        [numLanes]LaneSnapshot
	// Anonymous core requests: in flight (part of the core lane's count),
	// queued (not in the core lane's Queued) and their cap.
	AnonMax      int
	AnonInFlight int
	AnonQueued   int
	// Room is the login waiting room.
	Room RoomStats
}

// Snapshot returns the controller's current state.
func (c *Controller) Snapshot() Snapshot {
	lim := c.limits.Load()
	s := c.state.Load()
	snap := Snapshot{
		Budget:       lim.Budget,
		StaticBudget: c.configured.Load().Budget,
		InFlight:     totalOf(s),
		AnonMax:      lim.AnonMax,
		AnonInFlight: anonOf(s),
		AnonQueued:   int(c.anonQueued.Load()),
		Room:         c.roomStats(s),
	}
	for _, l := range Lanes() {
		ls := &c.lanes[l]
		ln := LaneSnapshot{
			Lane:        l,
			LaneLimits:  lim.Lane[l],
			InFlight:    inFlightOf(s, l),
			Queued:      int(ls.queued.Load()),
			ServiceTime: time.Duration(ls.service.Load()),
		}
		for d := range ln.Decisions {
			ln.Decisions[d] = ls.decisions[d].Load()
		}
		snap.Lanes[l] = ln
	}
	return snap
}
