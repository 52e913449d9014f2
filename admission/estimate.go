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
	// holds packs the counted permits held now (low 12 bits, at most
	// MaxBudget) and the sum of their start times (the rest, in
	// milliseconds since the controller's epoch), so that one load gives
	// both: their mean age, which the moving average, fed only by
	// releases, cannot see while the app hangs. 51 bits of milliseconds
	// hold 4095 starts of a controller running for 17 years.
	holds atomic.Int64
	_     [64]byte
}

const holdCountBits = 12

// hold and unhold count a permit that takes a slot in and out; since is
// its start, in milliseconds since the controller's epoch.
func (s *laneStats) hold(since int64)   { s.holds.Add(since<<holdCountBits + 1) }
func (s *laneStats) unhold(since int64) { s.holds.Add(-(since<<holdCountBits + 1)) }

// serviceAt is the service time the estimates use when now is nowMs
// milliseconds past the epoch: the moving average of completed holds, or
// the mean age of the holds still running when that is longer. Requests
// that run far past the average (an app hung on its database) then make
// waits look as long as they are.
func (s *laneStats) serviceAt(nowMs int64) time.Duration {
	svc := time.Duration(s.service.Load())
	h := s.holds.Load()
	if n := h & (1<<holdCountBits - 1); n > 0 && svc > 0 {
		if age := time.Duration(nowMs-(h>>holdCountBits)/n) * time.Millisecond; age > svc {
			return age
		}
	}
	return svc
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
func (c *Controller) expectedWait(l Lane, pos int, s uint64, now time.Time) time.Duration {
	svc := c.lanes[l].serviceAt(c.sinceEpoch(now))
	if svc <= 0 {
		return 0
	}
	running := max(1, inFlightOf(s, l))
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
	if c.lanes[Login].queued.Load() > 0 || !canAdmit(c.state.Load(), c.limits.Load(), Login) {
		return rate // the lane is busy: what it completes is what it can
	}
	if svc := time.Duration(c.lanes[Login].service.Load()); svc > 0 {
		rate = max(rate, float64(c.limits.Load().Lane[Login].Max)/svc.Seconds())
	}
	return rate
}
