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
	delta  uint64 // what the permit added to the state word; 0 when uncounted
	done   atomic.Bool
}

// Lane returns the lane the permit was granted in.
func (p *Permit) Lane() Lane { return p.lane }

// Waited returns how long the request queued before it was admitted.
func (p *Permit) Waited() time.Duration { return p.waited }

// Start returns when the permit was granted.
func (p *Permit) Start() time.Time { return p.start }

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
	if p == nil || !p.done.CompareAndSwap(false, true) {
		return
	}
	c := p.c
	// One stream or upgrade held for minutes would make every queued
	// request look hopeless for the next few dozen completions; a sample
	// is capped at what the queue timeout can make sense of.
	limit := max(4*c.limits.Load().Lane[p.lane].QueueTimeout, time.Second)
	c.lanes[p.lane].observe(max(min(now.Sub(p.start), limit), 0))
	if p.lane == Login {
		c.room.completed(now)
	}
	if p.delta != 0 {
		c.lanes[p.lane].unhold(c.sinceEpoch(p.start))
		c.release(p.delta)
	}
}

// Abandon returns the slot of a request that was never forwarded, without
// counting its hold time as service time.
func (p *Permit) Abandon() {
	if p == nil || !p.done.CompareAndSwap(false, true) {
		return
	}
	if p.delta != 0 {
		p.c.lanes[p.lane].unhold(p.c.sinceEpoch(p.start))
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
