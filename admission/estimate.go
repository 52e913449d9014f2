package admission

import (
	"sync/atomic"
	"time"
)

// laneStats are a lane's counters, padded so lanes do not share a cache line.
type laneStats struct {
	queued    atomic.Int64
	service   atomic.Int64 // moving average of slot hold time, ns
	decisions [numDecisions]atomic.Uint64
	// running counts the permits holding a slot for a request the app
	// works on: protocol upgrades hold their slots but are left out (see
	// Permit.Upgraded). progress is when the lane last showed the app
	// moving, in milliseconds since the controller's epoch: a completion,
	// an upgrade answered, or a request starting in an idle lane. While
	// requests run, the time since then is how long the app has done
	// nothing for the lane, which the moving average, fed only by
	// releases, cannot see while the app hangs.
	running  atomic.Int64
	progress atomic.Int64
	_        [64]byte
}

// hold counts a permit that takes a slot at since, in milliseconds since
// the controller's epoch. A lane that was idle starts its wait for
// progress then.
func (s *laneStats) hold(since int64) {
	if s.running.Add(1) == 1 {
		s.progress.Store(since)
	}
}

// unhold counts a permit out at nowMs; completed says the app finished
// it, which is progress. (Two releases may store their times out of
// order; the error is the milliseconds between them.)
func (s *laneStats) unhold(nowMs int64, completed bool) {
	s.running.Add(-1)
	if completed {
		s.progress.Store(nowMs)
	}
}

// serviceAt is the service time the estimates use when now is nowMs
// milliseconds past the epoch: the moving average of completed holds, or,
// when longer, how long the lane's running requests have gone without a
// completion, capped at limit. An app hung on its database then makes
// waits look as long as they are, and the lengthening stops at what a
// queue timeout can make sense of.
//
// It is the time since the lane's last progress, not the age of the
// requests running, because one request that runs for minutes among
// many quick ones (a long export, a stream) would drag their mean age to
// minutes, and the lane would refuse everyone as waiting too long while
// its other slots turn over in milliseconds. Time without progress grows
// only when no slot turns over.
func (s *laneStats) serviceAt(nowMs int64, limit time.Duration) time.Duration {
	svc := time.Duration(s.service.Load())
	if svc <= 0 || s.running.Load() <= 0 {
		return svc
	}
	if stalled := time.Duration(nowMs-s.progress.Load()) * time.Millisecond; stalled > svc {
		return max(min(stalled, limit), svc)
	}
	return svc
}

// sampleCap is the longest hold time lane l's estimates take in: one
// stream or upgrade held for minutes, or an app hung as long, would make
// every queued request look hopeless for the next few dozen completions;
// beyond what the queue timeout can make sense of, a longer time says
// nothing more.
func (c *Controller) sampleCap(l Lane) time.Duration {
	return max(4*c.limits.Load().Lane[l].QueueTimeout, time.Second)
}

// observe folds one slot hold time into the moving average. A weight of 1/8
// follows a change within a few dozen requests without jumping on one
// outlier.
func (s *laneStats) observe(d time.Duration) {
	for {
		old := s.service.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/8
		}
		if s.service.CompareAndSwap(old, next) {
			return
		}
	}
}

// sinceEpoch is t in milliseconds since the controller started, never
// negative.
func (c *Controller) sinceEpoch(t time.Time) int64 { return max(t.Sub(c.epoch).Milliseconds(), 0) }

// expectedWait estimates how long a request at position pos (1-based) of
// lane l's queue waits: the requests ahead drain at the rate the lane's
// running slots complete. It is zero until the lane has a service time.
//
// Only slots that turn over drain the queue: an upgrade holds its slot
// for as long as its connection lasts, so the slots counted are those of
// running requests, not of every permit in flight.
func (c *Controller) expectedWait(l Lane, pos int, s uint64, now time.Time) time.Duration {
	ls := &c.lanes[l]
	svc := ls.serviceAt(c.sinceEpoch(now), c.sampleCap(l))
	if svc <= 0 {
		return 0
	}
	running := max(1, min(inFlightOf(s, l), int(ls.running.Load())))
	return time.Duration(int64(svc) * int64(pos) / int64(running))
}

// loginWait is the expected wait of a login with ahead logins before it in
// line: the logins ahead and itself complete at loginRate.
func (c *Controller) loginWait(ahead int, s uint64, now time.Time) time.Duration {
	if rate := c.loginRate(now); rate > 0 {
		return time.Duration(float64(ahead+1) / rate * float64(time.Second))
	}
	return c.expectedWait(Login, ahead+1, s, now)
}

// loginRate is the login completion rate the estimates use, per second:
// the measured rate of the last completions. While logins wait in line or
// fill the lane, that rate is what the app can do. When a login slot is
// free and none waits, it may only be what
// clients asked for: tickets send logins off until their turn, the line
// drains, completions slow down for want of logins, and a rate measured
// from them alone would tell the next ones to stay away longer still,
// leaving the app idle while people wait. So with nobody in line the rate
// is never taken below what the lane completes when full, its max over the
// logins' average slot time. Erring early is cheap: a login back before
// its turn is held, then admitted.
func (c *Controller) loginRate(now time.Time) float64 {
	rate := c.room.rate(now)
	if sh := c.fleetShare.Load(); sh != nil && sh.Members > 0 {
		// In a fleet the places ahead are counted fleet-wide, and so is
		// the pace. This replica's share of the login lane says nothing
		// of whether the fleet's is busy (an idle replica holds none), so
		// the floor is the fleet's lane, by this replica's slot time,
		// unless logins wait here.
		rate = sh.LoginRate
		if svc := time.Duration(c.lanes[Login].service.Load()); svc > 0 && c.lanes[Login].queued.Load() == 0 {
			rate = max(rate, float64(c.configured.Load().Lane[Login].Max)/svc.Seconds())
		}
		return rate
	}
	if c.lanes[Login].queued.Load() > 0 || !canAdmit(c.state.Load(), c.limits.Load(), Login) {
		return rate // the lane is busy: what it completes is what it can
	}
	if svc := time.Duration(c.lanes[Login].service.Load()); svc > 0 {
		rate = max(rate, float64(c.limits.Load().Lane[Login].Max)/svc.Seconds())
	}
	return rate
}
