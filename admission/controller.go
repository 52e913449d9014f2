package admission

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
)

// Controller admits requests under Limits. It is safe for concurrent use.
//
// Most callers want Acquire, which waits in the lane's queue like
// rate.Limiter.Wait and fails fast when the wait could not end in time.
// When no request waits, Acquire and Release are lock-free; once any request
// queues, changes go through one mutex so that freed slots are handed to
// waiters in order.
type Controller struct {
	state atomic.Uint64
	// limits are the limits in force: configured, narrowed to the
	// effective budget (see Constrain). configured is what New or
	// Reconfigure was given, and ceiling the effective budget, negative
	// for none; both change under mu.
	limits     atomic.Pointer[Limits]
	configured atomic.Pointer[Limits]
	ceiling    int
	// share is the fleet's share of the configured limits (see
	// SetShare), nil outside a fleet; it changes under mu.
	share *Share
	// fleetShare is share, for readers outside mu, and loginBefore its
	// LoginBefore in Unix microseconds, 0 for none.
	fleetShare  atomic.Pointer[Share]
	loginBefore atomic.Int64

	buckets atomic.Pointer[buckets]
	closed  atomic.Bool
	clock   clockwork.Clock
	epoch   time.Time // start of the milliseconds in laneStats.progress

	// mu guards queues and seq, and serialises every state change made
	// while a request is queued. queues[l] holds lane l's waiters;
	// queues[anonQueue] the anonymous core ones, served after Core's.
	mu         sync.Mutex
	queues     [numQueues]queue
	seq        uint64
	anonQueued atomic.Int64

	lanes [numLanes]laneStats

	// room keeps the login line's places and completion rate.
	room *room

	// beforeSlow, when set by a test, runs between the lock-free attempt
	// and the slow path, to stage races there deterministically.
	beforeSlow func()
}

// Option configures a Controller.
type Option func(*Controller)

// WithClock makes the controller read time from clock; tests pass a fake.
func WithClock(clock clockwork.Clock) Option {
	return func(c *Controller) { c.clock = clock }
}

// New returns a controller enforcing limits.
func New(limits Limits, opts ...Option) (*Controller, error) {
	if err := limits.Validate(); err != nil {
		return nil, fmt.Errorf("admission: invalid limits: %w", err)
	}
	c := &Controller{clock: clockwork.NewRealClock(), room: newRoom(), ceiling: -1}
	for _, o := range opts {
		o(c)
	}
	c.epoch = c.clock.Now()
	b, err := newBuckets(limits)
	if err != nil {
		return nil, fmt.Errorf("admission: login buckets: %w", err)
	}
	c.buckets.Store(b)
	c.configured.Store(&limits)
	c.limits.Store(&limits)
	return c, nil
}

// Limits returns the limits in force: the configured ones, narrowed to the
// effective budget while Constrain has set one below the configured
// budget.
func (c *Controller) Limits() Limits { return *c.limits.Load() }

// Reconfigure replaces the limits without dropping anything: requests in
// flight keep their slots and queued requests keep their places. When limits
// shrink below what is in flight, new arrivals wait until enough drain.
func (c *Controller) Reconfigure(limits Limits) error {
	if err := limits.Validate(); err != nil {
		return fmt.Errorf("admission: invalid limits: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The buckets run at the fleet's part of the rates, if any.
	eff := c.effective(&limits)
	b, err := c.buckets.Load().reconfigure(c.clock.Now(), eff)
	if err != nil {
		return fmt.Errorf("admission: login buckets: %w", err)
	}
	c.buckets.Store(b)
	c.configured.Store(&limits)
	c.limits.Store(&eff)
	c.dispatch(&eff)
	return nil
}

// anonQueue indexes the queue of anonymous core requests.
const (
	anonQueue = numLanes
	numQueues = numLanes + 1
)

// Request is what the controller needs to know of one request.
type Request struct {
	// Lane is the request's lane.
	Lane Lane
	// Client keys the per-client login bucket; other lanes ignore it.
	Client string
	// Anonymous marks a request that carries no session lanegate could
	// validate. In the core lane it is admitted after waiting
	// authenticated requests and under Limits.AnonMax, so a flood of
	// anonymous traffic cannot starve logged-in users. Other lanes ignore
	// it.
	Anonymous bool
	// Ticket is the place a login presents when it comes back with a
	// ticket (Place.ID), and Arrival the first arrival the ticket
	// vouches for; the login then ranks by Arrival, not by now. The proxy
	// verifies tickets; the controller refuses one used twice at once,
	// already used, or whose first arrival is older than MaxPlaceAge.
	// A login with a good ticket pays no login token: every place was
	// paid for with one when it was made (see Returns and Keep). Other
	// lanes ignore both.
	Ticket  uint64
	Arrival time.Time
	// Fleet, for a login in a fleet that shares one line, is the rank the
	// fleet gave it on arrival; the proxy then sets Ticket and Arrival
	// from it. Nil for a lanegate alone, or when the fleet could not be
	// asked: the login then ranks in this replica's line only.
	Fleet   *Rank
	fleetAt time.Time // when the controller took Fleet's figures
	// Returns says a login sent away is handed its place to come back
	// with (the waiting room is on). The token the login paid then stays
	// with the place, so its return with the ticket is free; it is not
	// also given back, or a login could pay, be sent away, be refunded
	// and come back free, and the bucket would never count it. A login
	// that cannot come back with its place gets its token back instead,
	// as any login refused for want of a slot.
	Returns bool
	// Patient keeps a login in line for its lane's whole hold even when
	// its turn is expected later: a browser's POST, which is answered by
	// a redirect that the browser follows with its own copy of the form,
	// so it is better held than sent away at once.
	Patient bool
}

func (r *Request) anonymous() bool { return r.Anonymous && r.Lane == Core }

func (r *Request) queue() int {
	if r.anonymous() {
		return anonQueue
	}
	return int(r.Lane)
}

func (c *Controller) count(l Lane, d Decision) { c.lanes[l].decisions[d].Add(1) }
