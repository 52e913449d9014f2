package poolwatch

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// target is a controller that records what the watcher tells it.
type target struct {
	mu       sync.Mutex
	calls    []int
	inFlight int
	static   int
}

func (t *target) Constrain(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls = append(t.calls, n)
}

func (t *target) InFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.inFlight
}

func (t *target) StaticBudget() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.static
}

func (t *target) last() (int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.calls) == 0 {
		return 0, false
	}
	return t.calls[len(t.calls)-1], true
}

// source answers each read with the next of its answers; an answer of nil
// blocks the read until its context ends, as a console that hangs.
type source struct {
	mu      sync.Mutex
	answers []func() (Reading, error)
	// hung receives the context of each read that hangs.
	hung chan context.Context
}

func (s *source) push(f func() (Reading, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answers = append(s.answers, f)
}

func (s *source) Read(ctx context.Context) (Reading, error) {
	s.mu.Lock()
	var f func() (Reading, error)
	if len(s.answers) > 0 {
		f, s.answers = s.answers[0], s.answers[1:]
	}
	s.mu.Unlock()
	if f == nil {
		s.hung <- ctx
		<-ctx.Done()
		return Reading{}, ctx.Err()
	}
	return f()
}

func held(others int) func() (Reading, error) {
	return func() (Reading, error) {
		return Reading{Pool: Pool{Size: 8, SvActive: others}, Consoles: 1}, nil
	}
}

func broken() (Reading, error) { return Reading{}, errors.New("console: connection refused") }

// harness runs a watcher on a fake clock, one poll at a time.
type harness struct {
	t      *testing.T
	clock  *clockwork.FakeClock
	src    *source
	target *target
	w      *Watcher
	polls  chan struct{}
	logs   *observer.ObservedLogs
	stop   func()
}

func start(t *testing.T, follow bool, first func() (Reading, error)) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	h := &harness{
		t:      t,
		clock:  clockwork.NewFakeClock(),
		src:    &source{hung: make(chan context.Context, 1)},
		target: &target{static: 8},
		polls:  make(chan struct{}, 1),
		logs:   logs,
	}
	h.src.push(first)
	h.w = New(h.src, h.target, Options{
		Poll: 250 * time.Millisecond, Timeout: time.Second, Stale: 2 * time.Second,
		Follow: follow, Clock: h.clock, Log: zap.New(core),
	})
	h.w.afterPoll = func() {
		// A signal already pending says as much; blocking here would
		// hang the loop's last poll at stop.
		select {
		case h.polls <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		h.w.Run(ctx)
		close(done)
	}()
	h.stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(h.stop)
	h.wait()
	return h
}

// wait returns once a poll has ended.
func (h *harness) wait() {
	h.t.Helper()
	select {
	case <-h.polls:
	case <-time.After(5 * time.Second):
		h.t.Fatal("no poll")
	}
}

// next answers the next poll with f and waits for it.
func (h *harness) next(f func() (Reading, error)) Status {
	h.t.Helper()
	h.src.push(f)
	h.clock.Advance(250 * time.Millisecond)
	h.wait()
	return h.w.Status()
}

func TestWatcherSteersTheController(t *testing.T) {
	h := start(t, true, held(6))
	if got, _ := h.target.last(); got != 2 {
		t.Fatalf("constrained to %d, want 2 (8 less the 6 the others hold)", got)
	}
	st := h.w.Status()
	if st.State != StateOK || st.Others != 6 || st.Effective != 2 || st.Static != 8 {
		t.Fatalf("status %+v", st)
	}
	// lanegate's own requests are not the others'.
	h.target.inFlight = 2
	if st := h.next(held(8)); st.Others != 6 || st.Effective != 2 {
		t.Fatalf("with 2 of lanegate's in flight: others %d, budget %d; want 6, 2", st.Others, st.Effective)
	}
	h.stop()
	if got, _ := h.target.last(); got != 2 {
		t.Fatalf("after Run ended the controller is constrained to %d, want the last budget kept (2)", got)
	}
}

func TestWatcherOnlyWatchesWithoutFollow(t *testing.T) {
	h := start(t, false, held(6))
	h.next(held(7))
	st := h.w.Status()
	if st.Others != 7 || st.Effective != 8 {
		t.Fatalf("watch only: others %d, budget %d; want 7 and the static 8", st.Others, st.Effective)
	}
	h.target.mu.Lock()
	defer h.target.mu.Unlock()
	for _, n := range h.target.calls {
		if n >= 0 {
			t.Fatalf("watch only, yet constrained to %d", n)
		}
	}
}

// A console that fails keeps the last reading in force until it is stale,
// then gives the static budget back with one log line, and the watcher
// takes over again when the console answers.
func TestWatcherDegradesAndRecovers(t *testing.T) {
	h := start(t, true, held(6))
	st := h.next(broken)
	if st.State != StateOK || st.LastError == "" || st.Effective != 2 {
		t.Fatalf("one failed read: %+v; want the last reading still in force", st)
	}
	// Stale after 2 s: seven more failures at 250 ms reach it.
	for range 7 {
		st = h.next(broken)
	}
	if st.State != StateDegraded || !st.Degraded() || st.Effective != 8 {
		t.Fatalf("after 2 s of failures: %+v; want degraded on the static budget", st)
	}
	if got, _ := h.target.last(); got != -1 {
		t.Fatalf("degraded, yet constrained to %d", got)
	}
	// A minute more of failures: one more line, not one per poll.
	for range 240 {
		h.next(broken)
	}
	if n := h.logs.FilterMessageSnippet("cannot read").Len(); n != 2 {
		t.Fatalf("%d warning lines for a minute of failures, want 2", n)
	}
	st = h.next(held(5))
	if st.State != StateOK || st.Effective != 3 || st.LastError != "" {
		t.Fatalf("after recovery: %+v", st)
	}
	if got, _ := h.target.last(); got != 3 {
		t.Fatalf("after recovery constrained to %d, want 3", got)
	}
	if n := h.logs.FilterMessageSnippet("answers again").Len(); n != 1 {
		t.Fatalf("%d recovery lines, want 1", n)
	}
}

// A console that never answers is cut off at the timeout, on the
// watcher's clock.
func TestWatcherTimesOutAHangingConsole(t *testing.T) {
	h := start(t, true, held(6))
	h.src.push(nil) // hangs
	h.clock.Advance(250 * time.Millisecond)
	var ctx context.Context
	select {
	case ctx = <-h.src.hung:
	case <-time.After(5 * time.Second):
		t.Fatal("no read")
	}
	if d, ok := ctx.Deadline(); !ok || d.Sub(h.clock.Now()) != time.Second {
		t.Fatalf("read's deadline %v (set %v), want the timeout of 1s from now", d, ok)
	}
	h.clock.Advance(time.Second)
	h.wait()
	st := h.w.Status()
	if st.Failures != 1 || st.LastError == "" {
		t.Fatalf("after a hanging read: %+v", st)
	}
}

// Without any good reading the watcher is degraded at once: there is
// nothing to steer by.
func TestWatcherDegradedFromTheStart(t *testing.T) {
	h := start(t, true, broken)
	if st := h.w.Status(); st.State != StateDegraded || st.Effective != 8 {
		t.Fatalf("first read failed: %+v", st)
	}
}
