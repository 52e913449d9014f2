package admission

import (
	"sync/atomic"
	"time"
)

// Permit is a slot held by one request. Release it when the upstream has
// finished the response.
type Permit struct {
	c      *Controller
	start  time.Time
	waited time.Duration
	lane   Lane
	delta  uint64        // what the permit added to the state word; 0 when uncounted
	state  atomic.Uint32 // permitHeld, permitUpgraded or permitDone
	failed atomic.Bool   // see Failed
}

// A permit's states. It moves only forward, each step taken by one
// compare-and-swap, so that an upgrade racing a release counts it out of
// the lane's running requests once.
const (
	permitHeld = iota
	permitUpgraded
	permitDone
)

// Lane returns the lane the permit was granted in.
func (p *Permit) Lane() Lane { return p.lane }

// Waited returns how long the request queued before it was admitted.
func (p *Permit) Waited() time.Duration { return p.waited }

// Start returns when the permit was granted.
func (p *Permit) Start() time.Time { return p.start }

// Upgraded marks the permit as a protocol upgrade: the app answered 101
// Switching Protocols, and the slot now carries a connection (a
// WebSocket) for as long as it lasts. The permit keeps its slot until
// Release, but leaves the lane's estimates: a connection open for an
// hour is not a request the app is slow to finish, so its age does not
// make waits look longer, its slot is not counted as one that turns
// over, and its hold time is not taken as a service time when it is
// released. It is safe on a nil permit and does nothing after the first
// call or after Release.
func (p *Permit) Upgraded() {
	if p == nil || !p.state.CompareAndSwap(permitHeld, permitUpgraded) {
		return
	}
	if p.delta != 0 {
		// The app answered the upgrade: that is progress too.
		p.c.lanes[p.lane].unhold(p.c.sinceEpoch(p.c.clock.Now()), true)
	}
}

// Failed marks the request as one the app did not complete: the upstream
// refused it or failed before answering. Its hold
// time then says nothing of how long the app takes, and a login that
// failed did not move the line on: Release counts neither into the lane's
// service time or the waiting room's completion rate, which would
// otherwise read an instant 502 as thousands of logins a second. It is
// safe on a nil permit; call it before Release.
func (p *Permit) Failed() {
	if p != nil {
		p.failed.Store(true)
	}
}

// Release returns the slot. It is idempotent and safe on a nil permit, so
// every exit path of a handler may call it.
func (p *Permit) Release() {
	if p != nil {
		p.ReleaseAt(p.c.clock.Now())
	}
}

// ReleaseAt is Release for a caller that has just read the clock: now ends
// the slot's hold time, which feeds the lane's service-time estimate.
func (p *Permit) ReleaseAt(now time.Time) {
	if p == nil {
		return
	}
	was := p.state.Swap(permitDone)
	if was == permitDone {
		return
	}
	c := p.c
	if was == permitHeld && !p.failed.Load() {
		c.lanes[p.lane].observe(max(min(now.Sub(p.start), c.sampleCap(p.lane)), 0))
		if p.lane == Login {
			c.room.completed(now)
		}
	}
	if p.delta != 0 {
		if was == permitHeld {
			// A failure is not progress: an app that only fails must
			// not look as if it were keeping up.
			c.lanes[p.lane].unhold(c.sinceEpoch(now), !p.failed.Load())
		}
		c.release(p.delta)
	}
}

// Abandon returns the slot of a request that was never forwarded, without
// counting its hold time as service time.
func (p *Permit) Abandon() {
	if p == nil {
		return
	}
	was := p.state.Swap(permitDone)
	if was == permitDone {
		return
	}
	if p.delta != 0 {
		if was == permitHeld {
			p.c.lanes[p.lane].unhold(0, false)
		}
		p.c.release(p.delta)
	}
}

func (c *Controller) release(d uint64) {
	for {
		s := c.state.Load()
		if queuedOf(s) != 0 {
			break
		}
		if c.state.CompareAndSwap(s, s-d) {
			return
		}
	}
	c.mu.Lock()
	c.add(-int64(d))
	c.dispatch(c.limits.Load())
	c.mu.Unlock()
}

func (c *Controller) newPermit(r *Request, start time.Time, waited time.Duration) *Permit {
	p := &Permit{c: c, lane: r.Lane, start: start, waited: waited, delta: delta(r)}
	c.lanes[r.Lane].hold(c.sinceEpoch(start))
	return p
}
