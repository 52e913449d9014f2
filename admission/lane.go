// Package admission decides which requests may reach an upstream whose
// capacity is bounded by a database connection pool.
//
// Requests are sorted into lanes. All lanes share one concurrency budget;
// each lane has slots reserved for it alone, a cap it may never exceed, and a
// bounded FIFO queue with a deadline. A lane below its cap may borrow any
// slot that is neither in use nor reserved for another lane, so capacity is
// never wasted and no lane can take another's reservation. Logins are also
// paced by token buckets.
//
// The package knows nothing about HTTP: the proxy classifies a request, asks
// the Controller for a Permit and releases it when the upstream is done.
package admission

import (
	"errors"
	"fmt"
	"time"
)

// Lane identifies a class of requests that share limits.
type Lane uint8

// The lanes the controller schedules. Static files and other bypassed
// requests are not a lane: they never reach the controller.
const (
	// Core is ordinary application traffic: pages and API calls.
	Core Lane = iota
	// Login is authentication work (login, signup, password reset POSTs):
	// CPU-bound password hashing while holding a database connection.
	Login
	// Export is heavy, slow work such as reports and exports.
	Export

	numLanes = 3
)

// Lanes returns every lane in a stable order, for iteration.
func Lanes() [numLanes]Lane { return [numLanes]Lane{Login, Core, Export} }

// String returns the lane's lower-case name, as used in config and metrics.
func (l Lane) String() string {
	switch l {
	case Core:
		return "core"
	case Login:
		return "login"
	case Export:
		return "export"
	}
	return fmt.Sprintf("lane(%d)", uint8(l))
}

// ParseLane returns the lane with the given name.
func ParseLane(s string) (Lane, error) {
	for _, l := range Lanes() {
		if l.String() == s {
			return l, nil
		}
	}
	return 0, fmt.Errorf("admission: unknown lane %q", s)
}

// LaneLimits are the capacity rules of one lane.
type LaneLimits struct {
	// Reserved slots are usable by this lane only, whatever the others do.
	Reserved int
	// Max is the most requests of this lane in flight at once, reserved and
	// borrowed slots together.
	Max int
	// Queue is how many requests may wait for a slot; 0 means none wait.
	Queue int
	// QueueTimeout is the longest a request waits before it is shed.
	QueueTimeout time.Duration
}

// RateLimit configures a token bucket. A zero Rate disables the bucket.
type RateLimit struct {
	// Rate is the sustained number of requests per second.
	Rate float64
	// Burst is how many requests may pass at once after a quiet period.
	Burst int
}

// Enabled reports whether the bucket limits anything.
func (r RateLimit) Enabled() bool { return r.Rate > 0 }

// Limits is the whole admission policy. It may be replaced at run time with
// Controller.Reconfigure.
type Limits struct {
	// Budget is the total number of requests in flight to the upstream,
	// across all lanes.
	Budget int
	// Lane holds each lane's rules, indexed by Lane.
	Lane [numLanes]LaneLimits
	// LoginRate paces all logins together.
	LoginRate RateLimit
	// LoginPerClient paces the logins of each client address.
	LoginPerClient RateLimit
	// MaxClients bounds the per-client buckets kept; the least recently
	// seen client is forgotten first.
	MaxClients int
	// AnonMax caps anonymous core requests in flight (Request.Anonymous),
	// so that slots stay free for logged-in users however much anonymous
	// traffic arrives. Zero means no cap beyond the core lane's own.
	AnonMax int
}

// MaxBudget is the largest budget the controller accepts: in-flight counts
// have 12 bits each in its packed state word.
const MaxBudget = 1<<12 - 1

const maxBudget = MaxBudget

// maxQueued bounds all queues together, for the same reason.
const maxQueued = 1<<16 - 1

// Validate reports every inconsistency in l, joined.
func (l Limits) Validate() error {
	var errs []error
	if l.Budget < 1 || l.Budget > maxBudget {
		errs = append(errs, fmt.Errorf("budget %d: must be between 1 and %d", l.Budget, maxBudget))
	}
	sum, queues := 0, 0
	for _, lane := range Lanes() {
		ll := l.Lane[lane]
		if ll.Reserved < 0 {
			errs = append(errs, fmt.Errorf("%s reserved %d: must not be negative", lane, ll.Reserved))
		}
		if ll.Max < 0 {
			errs = append(errs, fmt.Errorf("%s max %d: must not be negative", lane, ll.Max))
		}
		if ll.Max > l.Budget {
			errs = append(errs, fmt.Errorf("%s max %d exceeds budget %d", lane, ll.Max, l.Budget))
		}
		if ll.Reserved > ll.Max {
			errs = append(errs, fmt.Errorf("%s reserved %d exceeds its max %d", lane, ll.Reserved, ll.Max))
		}
		if ll.Queue < 0 {
			errs = append(errs, fmt.Errorf("%s queue %d: must not be negative", lane, ll.Queue))
		}
		if ll.QueueTimeout < 0 {
			errs = append(errs, fmt.Errorf("%s queue timeout %s: must not be negative", lane, ll.QueueTimeout))
		}
		sum += max(ll.Reserved, 0)
		queues += max(ll.Queue, 0)
	}
	if l.AnonMax < 0 || l.AnonMax > l.Lane[Core].Max {
		errs = append(errs, fmt.Errorf("anonymous max %d: must be between 0 and the core max %d", l.AnonMax, l.Lane[Core].Max))
	}
	if queues > maxQueued {
		errs = append(errs, fmt.Errorf("queues sum to %d, more than %d", queues, maxQueued))
	}
	if sum > l.Budget {
		errs = append(errs, fmt.Errorf("reservations sum to %d, more than budget %d", sum, l.Budget))
	}
	for name, r := range map[string]RateLimit{"login rate": l.LoginRate, "login per-client rate": l.LoginPerClient} {
		if r.Rate < 0 {
			errs = append(errs, fmt.Errorf("%s %g: must not be negative", name, r.Rate))
		}
		if r.Enabled() && r.Burst < 1 {
			errs = append(errs, fmt.Errorf("%s burst %d: must be at least 1 when the rate is set", name, r.Burst))
		}
	}
	if l.LoginPerClient.Enabled() && l.MaxClients < 1 {
		errs = append(errs, fmt.Errorf("max clients %d: must be at least 1 when per-client rate is set", l.MaxClients))
	}
	return errors.Join(errs...)
}

// Errors a shed request carries, wrapped in a *ShedError. Match them with
// errors.Is.
var (
	// ErrQueueFull means the lane's queue had no room.
	ErrQueueFull = errors.New("queue full")
	// ErrQueueTimeout means the request waited its lane's whole queue
	// timeout without getting a slot.
	ErrQueueTimeout = errors.New("queue timeout")
	// ErrWaitTooLong means the expected wait, from the queue ahead and the
	// lane's recent service time, exceeds the queue timeout or the caller's
	// deadline, so the request is refused at once rather than held.
	ErrWaitTooLong = errors.New("expected wait too long")
	// ErrRateLimited means a token bucket had no token.
	ErrRateLimited = errors.New("rate limited")
	// ErrClosed means the controller is shutting down.
	ErrClosed = errors.New("shutting down")
)

// ShedError is returned when a request is refused. RetryAfter is the
// controller's estimate of when a retry could succeed, without jitter.
type ShedError struct {
	Lane       Lane
	Err        error
	RetryAfter time.Duration
	// Place, for a login, is the place in line kept for it: a retry that
	// brings it back (as a ticket) ranks by its first arrival.
	Place *Place
}

// Error says which lane refused the request, why, and when to retry.
func (e *ShedError) Error() string {
	return fmt.Sprintf("admission: %s lane: %v (retry after %s)", e.Lane, e.Err, e.RetryAfter)
}

// Unwrap returns the sentinel error, for errors.Is.
func (e *ShedError) Unwrap() error { return e.Err }
