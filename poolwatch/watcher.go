package poolwatch

import (
	"context"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// Source reads the pool; *Reader is the real one.
type Source interface {
	Read(ctx context.Context) (Reading, error)
}

// Target is what the watcher steers: the admission controller.
type Target interface {
	// Constrain sets the effective budget; a negative n lifts it.
	Constrain(n int)
	// InFlight is how many requests hold a slot now.
	InFlight() int
	// StaticBudget is the configured budget.
	StaticBudget() int
}

// Options configure a Watcher.
type Options struct {
	// Poll is how often the console is read.
	Poll time.Duration
	// Timeout bounds one read.
	Timeout time.Duration
	// Stale is how long the last good reading steers the budget while
	// reads fail; past it the static budget is back in force.
	Stale time.Duration
	// Window is how long a burst of the others is remembered before the
	// budget grows back; see the law. Zero means four polls.
	Window time.Duration
	// Follow makes the budget follow the pool; false only watches.
	Follow bool
	// Clock is read for every time; nil is the real clock.
	Clock clockwork.Clock
	// Log receives the watcher's few lines; nil discards them.
	Log *zap.Logger
}

// The watcher's states, as /status and /readyz name them.
const (
	// StateStarting: no reading yet; the static budget is in force.
	StateStarting = "starting"
	// StateOK: the last reading is fresh and steers the budget.
	StateOK = "ok"
	// StateDegraded: reads have failed for longer than Stale; the
	// static budget is in force until the console answers.
	StateDegraded = "degraded"
)

// Status is the watcher's state for /status and metrics.
type Status struct {
	// State is StateStarting, StateOK or StateDegraded.
	State string
	// Follow says whether the budget follows the pool or the pool is
	// only watched.
	Follow bool
	// Reading is the last good reading and At when it was taken; zero
	// before the first.
	Reading Reading
	At      time.Time
	// Age is how old the last good reading is now.
	Age time.Duration
	// InFlight is how many of lanegate's requests were in flight at the
	// last reading, and Others what the law took the pool's other
	// clients to hold or wait for (the largest estimate of its window).
	InFlight int
	Others   int
	// Effective is the budget in force, Static the configured one.
	Effective int
	Static    int
	// Reads and Failures count reads since start.
	Reads    uint64
	Failures uint64
	// LastError is the last read's error, if it failed; it never holds
	// a password.
	LastError   string
	LastErrorAt time.Time
}

// Degraded reports whether the watcher has lost the console: the static
// budget is in force and the pool is not being watched.
func (s Status) Degraded() bool { return s.State == StateDegraded }

// Watcher polls the pool and steers the admission controller's effective
// budget. Everything it does happens on its own goroutine, off the request
// path: a request never waits for the console.
type Watcher struct {
	src    Source
	target Target
	opts   Options
	clock  clockwork.Clock
	log    *zap.Logger

	// law and lastLog are the loop's own; mu guards status.
	law     law
	lastLog time.Time
	mu      sync.Mutex
	status  Status

	// afterPoll, when a test sets it, runs at the end of every poll.
	afterPoll func()
}

// logEvery bounds the log lines of a console that keeps failing.
const logEvery = time.Minute

// New returns a watcher reading src and steering target. Call Run to
// start it.
func New(src Source, target Target, opts Options) *Watcher {
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Poll <= 0 {
		opts.Poll = 250 * time.Millisecond
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	if opts.Window <= 0 {
		opts.Window = 4 * opts.Poll
	}
	static := target.StaticBudget()
	return &Watcher{
		src:    src,
		target: target,
		opts:   opts,
		clock:  opts.Clock,
		log:    opts.Log,
		law:    law{static: static, window: opts.Window},
		status: Status{State: StateStarting, Follow: opts.Follow, Effective: static, Static: static},
	}
}

// Run polls until ctx ends. The controller keeps the budget last set: Run
// ends when lanegate shuts down, and lifting the budget then would send
// every queued request into a pool the others may still hold.
func (w *Watcher) Run(ctx context.Context) {
	t := w.clock.NewTicker(w.opts.Poll)
	defer t.Stop()
	for {
		w.poll(ctx)
		if w.afterPoll != nil {
			w.afterPoll()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
	}
}

// poll reads the pool once and applies the law.
func (w *Watcher) poll(ctx context.Context) {
	before := w.target.InFlight()
	rctx, cancel := clockwork.WithTimeout(ctx, w.clock, w.opts.Timeout)
	r, err := w.src.Read(rctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	// The smaller count makes the larger estimate of the others: a
	// request that ended during the read may or may not be in it.
	inFlight := min(before, w.target.InFlight())
	now := w.clock.Now()
	static := w.target.StaticBudget()
	w.law.static = static
	if err != nil {
		w.failed(now, static, err)
		return
	}
	effective, held := w.law.next(now, r.Pool, inFlight)
	if w.opts.Follow {
		w.target.Constrain(effective)
	} else {
		effective = static
	}

	w.mu.Lock()
	recovered := w.status.State == StateDegraded
	w.status.State = StateOK
	w.status.Reading, w.status.At = r, now
	w.status.InFlight, w.status.Others = inFlight, held
	w.status.Effective, w.status.Static = effective, static
	w.status.Reads++
	w.status.LastError = ""
	w.mu.Unlock()
	if recovered {
		w.log.Info("pool watcher: PgBouncer's console answers again", zap.Int("effective_budget", effective))
		w.lastLog = time.Time{}
	}
}

// failed records a failed read. The last good reading goes on steering
// until it is Stale; then the static budget is back, because a budget
// computed from a pool nobody can see may be far too small or too large.
func (w *Watcher) failed(now time.Time, static int, err error) {
	w.mu.Lock()
	st := &w.status
	st.Reads++
	st.Failures++
	st.LastError, st.LastErrorAt = err.Error(), now
	stale := st.At.IsZero() || now.Sub(st.At) >= w.opts.Stale
	lost := stale && st.State != StateDegraded
	if stale {
		st.State = StateDegraded
		st.Effective, st.Static = static, static
	}
	failures := st.Failures
	w.mu.Unlock()

	if stale {
		w.law.reset()
		w.target.Constrain(-1)
	}
	// One line when the console is lost, then one a minute while it
	// stays lost: a console down for a day must not write a line a poll.
	if lost || stale && now.Sub(w.lastLog) >= logEvery {
		w.lastLog = now
		w.log.Warn("pool watcher: cannot read PgBouncer's console; admitting under the static budget until it answers",
			zap.Error(err), zap.Uint64("failed_reads", failures), zap.Int("static_budget", static))
	}
}

// Status returns the watcher's state now.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	st := w.status
	w.mu.Unlock()
	if !st.At.IsZero() {
		st.Age = w.clock.Since(st.At)
	}
	return st
}
