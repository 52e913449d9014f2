package admission

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLimits: budget 10; login reserves 2 (max 4), core reserves 4 (max 10),
// export reserves 0 (max 2). Four slots are free for borrowing.
func testLimits() Limits {
	var l Limits
	l.Budget = 10
	l.Lane[Login] = LaneLimits{Reserved: 2, Max: 4, Queue: 10, QueueTimeout: 10 * time.Second}
	l.Lane[Core] = LaneLimits{Reserved: 4, Max: 10, Queue: 10, QueueTimeout: 5 * time.Second}
	l.Lane[Export] = LaneLimits{Reserved: 0, Max: 2, Queue: 2, QueueTimeout: 30 * time.Second}
	return l
}

func newTest(t *testing.T, l Limits) (*Controller, *clockwork.FakeClock) {
	t.Helper()
	clock := clockwork.NewFakeClock()
	c, err := New(l, WithClock(clock))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, clock
}

// mustAcquire admits a request that must not wait.
func mustAcquire(t *testing.T, c *Controller, l Lane) *Permit {
	t.Helper()
	p, err := c.Acquire(context.Background(), Request{Lane: l})
	if err != nil {
		t.Fatalf("Acquire(%s): %v", l, err)
	}
	return p
}

type result struct {
	p   *Permit
	err error
}

// enqueue starts an Acquire that is expected to wait and returns once it is
// queued: each waiter arms one timer on the fake clock, so waiting for
// the number of timers to grow is waiting for the queue to grow.
func enqueue(t *testing.T, ctx context.Context, c *Controller, clock *clockwork.FakeClock, l Lane, waitersBefore int) <-chan result {
	t.Helper()
	ch := make(chan result, 1)
	go func() {
		p, err := c.Acquire(ctx, Request{Lane: l, Client: "client"})
		ch <- result{p, err}
	}()
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := clock.BlockUntilContext(bctx, waitersBefore+1); err != nil {
		t.Fatalf("request in %s lane never queued: %v", l, err)
	}
	return ch
}

func recv(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no result")
		return result{}
	}
}

func checkInFlight(t *testing.T, c *Controller, want map[Lane]int) {
	t.Helper()
	snap := c.Snapshot()
	for l, n := range want {
		if got := snap.Lanes[l].InFlight; got != n {
			t.Errorf("%s in flight: got %d, want %d", l, got, n)
		}
	}
}

func TestReservationHonouredWhileAnotherLaneFloods(t *testing.T) {
	c, clock := newTest(t, testLimits())
	var core []*Permit
	// Core may use everything but login's unused reservation: 10 - 2 = 8.
	for range 8 {
		core = append(core, mustAcquire(t, c, Core))
	}
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	checkInFlight(t, c, map[Lane]int{Core: 8})

	// Login's two reserved slots are still there.
	l1 := mustAcquire(t, c, Login)
	l2 := mustAcquire(t, c, Login)
	checkInFlight(t, c, map[Lane]int{Core: 8, Login: 2})

	// Budget is now full; a third login must wait even though login is
	// under its max.
	lch := enqueue(t, context.Background(), c, clock, Login, 1)

	// A freed core slot goes to the oldest waiter (core, both borrowing).
	core[0].Release()
	r := recv(t, ch)
	if r.err != nil {
		t.Fatalf("queued core: %v", r.err)
	}
	checkInFlight(t, c, map[Lane]int{Core: 8, Login: 2})
	// A freed login slot goes to the queued login.
	l1.Release()
	lr := recv(t, lch)
	if lr.err != nil {
		t.Fatalf("queued login: %v", lr.err)
	}
	for _, p := range append(core[1:], r.p, l2, lr.p) {
		p.Release()
	}
	checkInFlight(t, c, map[Lane]int{Core: 0, Login: 0, Export: 0})
}

func TestLoginFloodCannotTakeCoreReservation(t *testing.T) {
	c, clock := newTest(t, testLimits())
	var logins []*Permit
	for range 4 { // login max
		logins = append(logins, mustAcquire(t, c, Login))
	}
	ch := enqueue(t, context.Background(), c, clock, Login, 0)
	// Export borrows the rest of the unreserved slots.
	e1 := mustAcquire(t, c, Export)
	e2 := mustAcquire(t, c, Export)
	// Core's four reserved slots remain.
	var core []*Permit
	for range 4 {
		core = append(core, mustAcquire(t, c, Core))
	}
	checkInFlight(t, c, map[Lane]int{Login: 4, Export: 2, Core: 4})
	if got := c.Snapshot().InFlight; got != 10 {
		t.Fatalf("total in flight: got %d, want 10", got)
	}
	// The queued login still waits: login is at its max.
	select {
	case r := <-ch:
		t.Fatalf("login admitted past its max: %+v", r)
	default:
	}
	e1.Release()
	// Login is at max, so the freed slot is not given to it.
	checkInFlight(t, c, map[Lane]int{Login: 4, Export: 1})
	logins[0].Release()
	r := recv(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, p := range append(append(logins[1:], core...), e2, r.p) {
		p.Release()
	}
}

func TestBorrowingReturnsCapacity(t *testing.T) {
	l := testLimits()
	c, clock := newTest(t, l)
	// Export borrows both its slots, core takes the rest it may.
	e1 := mustAcquire(t, c, Export)
	e2 := mustAcquire(t, c, Export)
	var core []*Permit
	for range 6 {
		core = append(core, mustAcquire(t, c, Core))
	}
	cch := enqueue(t, context.Background(), c, clock, Core, 0)
	// Export finishing returns its borrowed slot to the pool, and queued
	// core takes it.
	e1.Release()
	r := recv(t, cch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	checkInFlight(t, c, map[Lane]int{Core: 7, Export: 1})
	e2.Release()
	r.p.Release()
	for _, p := range core {
		p.Release()
	}
	if got := c.Snapshot().InFlight; got != 0 {
		t.Fatalf("in flight after releases: got %d, want 0", got)
	}
}

func TestReservedLaneServedFirst(t *testing.T) {
	var l Limits
	l.Budget = 6
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 6, Queue: 5, QueueTimeout: time.Second}
	l.Lane[Login] = LaneLimits{Reserved: 2, Max: 3, Queue: 5, QueueTimeout: time.Second}
	l.Lane[Export] = LaneLimits{Max: 1, Queue: 1, QueueTimeout: time.Second}
	c, clock := newTest(t, l)
	// Overload core past its limits (as mode off would) so login's
	// reservation is not free either.
	var forced []*Permit
	for range 6 {
		forced = append(forced, c.Pass(Request{Lane: Core}))
	}
	cch := enqueue(t, context.Background(), c, clock, Core, 0)
	lch := enqueue(t, context.Background(), c, clock, Login, 1)
	forced[0].Release()
	r := recv(t, lch)
	if r.err != nil {
		t.Fatalf("login below reservation not served first: %v", r.err)
	}
	select {
	case r := <-cch:
		t.Fatalf("core admitted while login's reservation was owed: %+v", r)
	default:
	}
	for _, p := range forced[1:] {
		p.Release()
	}
	cr := recv(t, cch)
	if cr.err != nil {
		t.Fatal(cr.err)
	}
	cr.p.Release()
	r.p.Release()
	checkInFlight(t, c, map[Lane]int{Core: 0, Login: 0})
}

func TestFIFOWithinLane(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 5, QueueTimeout: time.Minute}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	var chans []<-chan result
	for i := range 4 {
		chans = append(chans, enqueue(t, context.Background(), c, clock, Core, i))
	}
	for i, ch := range chans {
		p.Release()
		r := recv(t, ch)
		if r.err != nil {
			t.Fatalf("waiter %d: %v", i, r.err)
		}
		for _, later := range chans[i+1:] {
			select {
			case r := <-later:
				t.Fatalf("a later waiter was admitted before waiter %d: %+v", i, r)
			default:
			}
		}
		p = r.p
	}
	p.Release()
}

func TestQueueFull(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 1, QueueTimeout: time.Minute}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	ctx, cancel := context.WithCancel(context.Background())
	ch := enqueue(t, ctx, c, clock, Core, 0)
	_, err := c.Acquire(context.Background(), Request{Lane: Core})
	var se *ShedError
	if !errors.As(err, &se) || !errors.Is(err, ErrQueueFull) {
		t.Fatalf("got %v, want a *ShedError wrapping ErrQueueFull", err)
	}
	cancel()
	if r := recv(t, ch); r.err == nil || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled waiter: got %v, want context.Canceled", r.err)
	}
	p.Release()
	snap := c.Snapshot().Lanes[Core]
	if snap.Decisions[QueueFull] != 1 || snap.Decisions[Cancelled] != 1 || snap.Decisions[Admitted] != 1 {
		t.Fatalf("decisions: got %v", snap.Decisions)
	}
}

func TestQueueTimeout(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 3, QueueTimeout: 5 * time.Second}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	clock.Advance(4 * time.Second)
	select {
	case r := <-ch:
		t.Fatalf("timed out early: %+v", r)
	default:
	}
	clock.Advance(time.Second)
	r := recv(t, ch)
	if !errors.Is(r.err, ErrQueueTimeout) {
		t.Fatalf("got %v, want ErrQueueTimeout", r.err)
	}
	// No service time is known (nothing was released): the hint is the
	// wait it just had, not zero.
	var se *ShedError
	if !errors.As(r.err, &se) || se.RetryAfter < 5*time.Second {
		t.Fatalf("retry after a full queue wait: got %+v, want at least the 5 s waited", se)
	}
	if got := c.Snapshot().Lanes[Core].Queued; got != 0 {
		t.Fatalf("queued after timeout: got %d, want 0", got)
	}
	p.Release()
	// The slot is free again and nothing is stuck in the state word.
	mustAcquire(t, c, Core).Release()
	if s := c.state.Load(); s != 0 {
		t.Fatalf("state after all released: got %#x, want 0", s)
	}
}

func TestCancellationFreesPlace(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 2, QueueTimeout: time.Minute}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	ctx, cancel := context.WithCancel(context.Background())
	first := enqueue(t, ctx, c, clock, Core, 0)
	second := enqueue(t, context.Background(), c, clock, Core, 1)
	cancel()
	if r := recv(t, first); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", r.err)
	}
	if got := c.Snapshot().Lanes[Core].Queued; got != 1 {
		t.Fatalf("queued after cancel: got %d, want 1", got)
	}
	// The queue has room for a new waiter again.
	third := enqueue(t, context.Background(), c, clock, Core, 1)
	p.Release()
	r := recv(t, second)
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.p.Release()
	r = recv(t, third)
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.p.Release()
}

func TestEarlyRejection(t *testing.T) {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2, Queue: 100, QueueTimeout: 5 * time.Second}
	c, clock := newTest(t, l)
	// Teach the controller that a core request holds its slot for 2 s.
	p := mustAcquire(t, c, Core)
	clock.Advance(2 * time.Second)
	p.Release()
	if got := c.Snapshot().Lanes[Core].ServiceTime; got != 2*time.Second {
		t.Fatalf("service time: got %s, want 2s", got)
	}
	a := mustAcquire(t, c, Core)
	b := mustAcquire(t, c, Core)
	// Two slots, 2 s each: positions 1..5 expect 1,2,3,4,5 s of wait; all
	// fit in the 5 s timeout. Position 6 expects 6 s and is refused at once.
	var waiting []<-chan result
	for i := range 5 {
		waiting = append(waiting, enqueue(t, context.Background(), c, clock, Core, i))
	}
	_, err := c.Acquire(context.Background(), Request{Lane: Core})
	var se *ShedError
	if !errors.As(err, &se) || !errors.Is(err, ErrWaitTooLong) {
		t.Fatalf("got %v, want ErrWaitTooLong", err)
	}
	if se.RetryAfter != 6*time.Second {
		t.Fatalf("retry after: got %s, want 6s", se.RetryAfter)
	}
	// A caller deadline shorter than the expected wait is refused too.
	ctx, cancel := context.WithDeadline(context.Background(), clock.Now().Add(time.Second))
	defer cancel()
	c.Close() // answer the queued requests so the test ends
	_, err = c.Acquire(ctx, Request{Lane: Core})
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: got %v, want ErrClosed", err)
	}
	for _, ch := range waiting {
		if r := recv(t, ch); !errors.Is(r.err, ErrClosed) {
			t.Fatalf("queued at Close: got %v, want ErrClosed", r.err)
		}
	}
	a.Release()
	b.Release()
}

func TestEarlyRejectionByCallerDeadline(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 100, QueueTimeout: time.Minute}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	clock.Advance(3 * time.Second)
	p.Release()
	p = mustAcquire(t, c, Core)
	defer p.Release()
	ctx, cancel := context.WithDeadline(context.Background(), clock.Now().Add(2*time.Second))
	defer cancel()
	if _, err := c.Acquire(ctx, Request{Lane: Core}); !errors.Is(err, ErrWaitTooLong) {
		t.Fatalf("got %v, want ErrWaitTooLong", err)
	}
}

func TestReleaseIsIdempotent(t *testing.T) {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2}
	c, _ := newTest(t, l)
	p := mustAcquire(t, c, Core)
	q := mustAcquire(t, c, Core)
	p.Release()
	p.Release()
	checkInFlight(t, c, map[Lane]int{Core: 1})
	q.Release()
	var nilPermit *Permit
	nilPermit.Release()
	checkInFlight(t, c, map[Lane]int{Core: 0})
}

func TestLoginRateLimit(t *testing.T) {
	l := testLimits()
	l.LoginRate = RateLimit{Rate: 1, Burst: 2}
	c, clock := newTest(t, l)
	a := mustAcquire(t, c, Login)
	b := mustAcquire(t, c, Login)
	_, err := c.Acquire(context.Background(), Request{Lane: Login})
	var se *ShedError
	if !errors.As(err, &se) || !errors.Is(err, ErrRateLimited) {
		t.Fatalf("got %v, want ErrRateLimited", err)
	}
	if se.RetryAfter != time.Second {
		t.Fatalf("retry after: got %s, want 1s", se.RetryAfter)
	}
	// Core is not paced.
	mustAcquire(t, c, Core).Release()
	clock.Advance(time.Second)
	mustAcquire(t, c, Login).Release()
	a.Release()
	b.Release()
}

func TestShedLoginRefundsToken(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Login] = LaneLimits{Reserved: 1, Max: 1, Queue: 0, QueueTimeout: time.Second}
	l.LoginRate = RateLimit{Rate: 1, Burst: 2}
	c, _ := newTest(t, l)
	p := mustAcquire(t, c, Login) // one token left
	for range 3 {
		// No queue: shed with ErrQueueFull, and the token comes back.
		if _, err := c.Acquire(context.Background(), Request{Lane: Login}); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("got %v, want ErrQueueFull", err)
		}
	}
	p.Release()
	mustAcquire(t, c, Login).Release()
}

func TestPerClientRateLimit(t *testing.T) {
	l := testLimits()
	l.LoginPerClient = RateLimit{Rate: 0.5, Burst: 1}
	l.MaxClients = 2
	c, clock := newTest(t, l)
	ctx := context.Background()
	p, err := c.Acquire(ctx, Request{Lane: Login, Client: "10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	p.Release()
	_, err = c.Acquire(ctx, Request{Lane: Login, Client: "10.0.0.1"})
	var se *ShedError
	if !errors.As(err, &se) || !errors.Is(err, ErrRateLimited) || se.RetryAfter != 2*time.Second {
		t.Fatalf("same client: got %v, want ErrRateLimited after 2s", err)
	}
	p, err = c.Acquire(ctx, Request{Lane: Login, Client: "10.0.0.2"})
	if err != nil {
		t.Fatalf("other client: %v", err)
	}
	p.Release()
	clock.Advance(2 * time.Second)
	p, err = c.Acquire(ctx, Request{Lane: Login, Client: "10.0.0.1"})
	if err != nil {
		t.Fatalf("after refill: %v", err)
	}
	p.Release()
}

func TestReconfigureKeepsQueuedAndGrows(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 5, QueueTimeout: time.Minute}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	bad := l
	bad.Lane[Core].Reserved = 5
	if err := c.Reconfigure(bad); err == nil {
		t.Fatal("Reconfigure accepted reserved > budget")
	}
	l.Budget = 2
	l.Lane[Core].Max = 2
	if err := c.Reconfigure(l); err != nil {
		t.Fatal(err)
	}
	r := recv(t, ch)
	if r.err != nil {
		t.Fatalf("queued request after growth: %v", r.err)
	}
	// Shrinking below what is in flight drops nothing; new arrivals wait.
	l.Budget = 1
	l.Lane[Core].Max = 1
	if err := c.Reconfigure(l); err != nil {
		t.Fatal(err)
	}
	checkInFlight(t, c, map[Lane]int{Core: 2})
	ch = enqueue(t, context.Background(), c, clock, Core, 0)
	p.Release()
	select {
	case r := <-ch:
		t.Fatalf("admitted while over the shrunk budget: %+v", r)
	default:
	}
	r.p.Release()
	r = recv(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.p.Release()
}

func TestShadowCountsWithoutRefusing(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 1, QueueTimeout: time.Second}
	c, _ := newTest(t, l)
	d1, p1 := c.Shadow(Request{Lane: Core})
	d2, p2 := c.Shadow(Request{Lane: Core})
	d3, p3 := c.Shadow(Request{Lane: Core})
	want := []Decision{ShadowAdmitted, ShadowQueued, ShadowQueueFull}
	for i, d := range []Decision{d1, d2, d3} {
		if d != want[i] {
			t.Errorf("request %d: got %s, want %s", i, d, want[i])
		}
	}
	checkInFlight(t, c, map[Lane]int{Core: 3})
	for _, p := range []*Permit{p1, p2, p3} {
		p.Release()
	}
	checkInFlight(t, c, map[Lane]int{Core: 0})
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Limits)
	}{
		{"zero budget", func(l *Limits) { l.Budget = 0 }},
		{"reserved over max", func(l *Limits) { l.Lane[Login].Reserved = 5 }},
		{"max over budget", func(l *Limits) { l.Lane[Core].Max = 11 }},
		{"reservations over budget", func(l *Limits) { l.Lane[Export].Reserved = 2; l.Lane[Core].Reserved = 8; l.Lane[Core].Max = 8 }},
		{"negative queue", func(l *Limits) { l.Lane[Core].Queue = -1 }},
		{"rate without burst", func(l *Limits) { l.LoginRate = RateLimit{Rate: 1} }},
		{"per client without size", func(l *Limits) { l.LoginPerClient = RateLimit{Rate: 1, Burst: 1} }},
	}
	if err := testLimits().Validate(); err != nil {
		t.Fatalf("valid limits: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := testLimits()
			tt.mod(&l)
			if err := l.Validate(); err == nil {
				t.Fatal("got nil error, want one")
			}
			if _, err := New(l); err == nil {
				t.Fatal("New accepted invalid limits")
			}
		})
	}
}

// A lane at both its max and the budget has one queue ahead, not two.
func TestShadowQueueAheadNotDoubleCounted(t *testing.T) {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2, Queue: 2, QueueTimeout: time.Second}
	c, _ := newTest(t, l)
	var permits []*Permit
	var got []Decision
	for range 5 {
		d, p := c.Shadow(Request{Lane: Core})
		got = append(got, d)
		permits = append(permits, p)
	}
	want := []Decision{ShadowAdmitted, ShadowAdmitted, ShadowQueued, ShadowQueued, ShadowQueueFull}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("request %d: got %s, want %s", i, got[i], want[i])
		}
	}
	for _, p := range permits {
		p.Release()
	}
}

// A login that queued and then timed out gets its token back: the next
// login from the same client is not rate limited.
func TestQueuedLoginRefundsTokenAfterTimeout(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Login] = LaneLimits{Reserved: 1, Max: 1, Queue: 1, QueueTimeout: 5 * time.Second}
	l.LoginPerClient = RateLimit{Rate: 0.001, Burst: 2}
	l.MaxClients = 10
	c, clock := newTest(t, l)
	p, err := c.Acquire(context.Background(), Request{Lane: Login, Client: "client"})
	if err != nil {
		t.Fatal(err)
	}
	ch := enqueue(t, context.Background(), c, clock, Login, 0) // takes the second token
	clock.Advance(5 * time.Second)
	if r := recv(t, ch); !errors.Is(r.err, ErrQueueTimeout) {
		t.Fatalf("got %v, want ErrQueueTimeout", r.err)
	}
	p.Release()
	p, err = c.Acquire(context.Background(), Request{Lane: Login, Client: "client"})
	if err != nil {
		t.Fatalf("after a queued login timed out: got %v, want its token back", err)
	}
	p.Release()
	// A refund never lifts the bucket above its burst.
	if _, err := c.Acquire(context.Background(), Request{Lane: Login, Client: "client"}); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("third login: got %v, want ErrRateLimited", err)
	}
}

// A login refused after it took its token gives the token back at a clock
// read under the controller's lock, not at its arrival: logins that took
// tokens while it waited for the lock moved the bucket's clock on, and a
// refund dated before them would rewind it and make the tokens of the
// time between a second time.
func TestRefundDoesNotRewindBucket(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Login] = LaneLimits{Reserved: 1, Max: 1, Queue: 0, QueueTimeout: time.Second}
	l.LoginRate = RateLimit{Rate: 1, Burst: 5}
	c, clock := newTest(t, l)
	busy := mustAcquire(t, c, Login)
	defer busy.Release()
	b := c.buckets.Load()
	take := func() bool {
		_, wait := b.take(clock.Now(), "")
		return wait == 0
	}
	for range 3 {
		if !take() {
			t.Fatal("the bucket ran dry early")
		}
	}
	// One token left, which the login below takes. Before it reaches the
	// lock, 2 s pass and two other logins take the two tokens made
	// meanwhile.
	c.beforeSlow = func() {
		clock.Advance(2 * time.Second)
		for range 2 {
			if !take() {
				t.Error("no token for a login while the refused one waits for the lock")
			}
		}
	}
	if _, err := c.Acquire(context.Background(), Request{Lane: Login}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("got %v, want ErrQueueFull", err)
	}
	c.beforeSlow = nil
	n := 0
	for n <= l.LoginRate.Burst && take() {
		n++
	}
	if n != 1 {
		t.Fatalf("tokens after the refund: %d, want 1 (the refunded one)", n)
	}
}

// A request that passed Acquire's closed check just before Close ran is
// refused when it reaches the queue, not left waiting in a queue that Close
// already emptied.
func TestCloseBetweenCheckAndQueue(t *testing.T) {
	var l Limits
	l.Budget = 1
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 100, QueueTimeout: time.Hour}
	c, _ := newTest(t, l)
	hold := mustAcquire(t, c, Core)
	defer hold.Release()
	c.beforeSlow = c.Close
	done := make(chan error, 1)
	go func() {
		_, err := c.Acquire(context.Background(), Request{Lane: Core})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("request queued after Close and was never answered")
	}
}

// One very long hold does not make every later queued request look
// hopeless: samples are capped.
func TestServiceTimeSampleCapped(t *testing.T) {
	l := testLimits()
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	clock.Advance(10 * time.Minute)
	p.Release()
	if got, limit := c.Snapshot().Lanes[Core].ServiceTime, 4*l.Lane[Core].QueueTimeout; got != limit {
		t.Fatalf("service time after a 10 min hold: got %s, want the cap %s", got, limit)
	}
}

// A slot given up without forwarding leaves no service-time sample.
func TestAbandonSkipsServiceTime(t *testing.T) {
	c, clock := newTest(t, testLimits())
	p := mustAcquire(t, c, Core)
	clock.Advance(time.Second)
	p.Abandon()
	p.Release() // idempotent with Abandon
	snap := c.Snapshot().Lanes[Core]
	if snap.ServiceTime != 0 || snap.InFlight != 0 {
		t.Fatalf("got service time %s, in flight %d; want 0, 0", snap.ServiceTime, snap.InFlight)
	}
}

// A lane below its own cap waits for a slot any lane frees, so its own
// slots' pace must not refuse it: exports of 10 s each, one running, a
// 5 s queue timeout, while the budget is full of core requests that free
// slots far sooner. At its cap, the lane's own pace does decide.
func TestEarlyRejectionOnlyAtOwnCap(t *testing.T) {
	var l Limits
	l.Budget = 3
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 3, Queue: 10, QueueTimeout: 5 * time.Second}
	l.Lane[Export] = LaneLimits{Reserved: 0, Max: 2, Queue: 10, QueueTimeout: 5 * time.Second}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Export)
	clock.Advance(10 * time.Second)
	p.Release() // exports take 10 s
	export := mustAcquire(t, c, Export)
	core1, core2 := mustAcquire(t, c, Core), mustAcquire(t, c, Core)

	// Below its cap of 2 with the budget full: it waits.
	waiting := enqueue(t, context.Background(), c, clock, Export, 0)
	core1.Release()
	r := recv(t, waiting)
	if r.err != nil {
		t.Fatalf("export below its cap: got %v, want a slot once core freed one", r.err)
	}
	// Now at its cap of 2: the next one's wait is the exports' own pace,
	// 10 s / 2 slots = 5 s for position 1... and 10 s for position 2.
	enqueue(t, context.Background(), c, clock, Export, 0)
	_, err := c.Acquire(context.Background(), Request{Lane: Export})
	if !errors.Is(err, ErrWaitTooLong) {
		t.Fatalf("export at its cap: got %v, want ErrWaitTooLong", err)
	}
	c.Close()
	for _, q := range []*Permit{export, core2, r.p} {
		q.Release()
	}
}

// While the running requests hang far past the lane's average, waits are
// judged by how long the lane has gone without a completion: the average,
// fed only by releases, still says milliseconds.
func TestHungRequestsLengthenEstimates(t *testing.T) {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2, Queue: 10, QueueTimeout: 5 * time.Second}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	clock.Advance(50 * time.Millisecond)
	p.Release() // pages take 50 ms
	a, b := mustAcquire(t, c, Core), mustAcquire(t, c, Core)
	clock.Advance(20 * time.Second) // and then the database hangs

	ch := make(chan result, 1)
	go func() {
		p, err := c.Acquire(context.Background(), Request{Lane: Core})
		ch <- result{p, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-time.After(5 * time.Second):
		c.Close()
		t.Fatalf("the request queued, judged by the 50 ms average; want it refused at once")
	}
	var se *ShedError
	if !errors.As(r.err, &se) || !errors.Is(r.err, ErrWaitTooLong) {
		t.Fatalf("got %v, want ErrWaitTooLong", r.err)
	}
	// Two slots held for 20 s: the next one frees in about 10 s.
	if se.RetryAfter < 10*time.Second {
		t.Errorf("retry after: got %s, want at least 10 s", se.RetryAfter)
	}
	a.Release()
	b.Release()
	// Once released, the slots no longer count as running.
	if n := c.lanes[Core].running.Load(); n != 0 {
		t.Errorf("running after release: got %d, want 0", n)
	}
}

// One request that runs for minutes (a long export, a stream) among quick
// ones that keep completing does not make the lane refuse everyone as
// waiting too long: the lane is not hung, its other slots turn over.
func TestLongRequestDoesNotStallEstimates(t *testing.T) {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2, Queue: 10, QueueTimeout: 5 * time.Second}
	c, clock := newTest(t, l)
	long := mustAcquire(t, c, Core)
	defer long.Release()
	clock.Advance(10 * time.Minute)
	for range 3 { // pages take 50 ms, and keep completing
		p := mustAcquire(t, c, Core)
		clock.Advance(50 * time.Millisecond)
		p.Release()
	}
	short := mustAcquire(t, c, Core) // the lane is at its cap
	ch := make(chan result, 1)
	go func() {
		p, err := c.Acquire(context.Background(), Request{Lane: Core})
		ch <- result{p, err}
	}()
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	queued := make(chan error, 1)
	go func() { queued <- clock.BlockUntilContext(bctx, 1) }()
	select {
	case r := <-ch:
		r.p.Release()
		t.Fatalf("next request: got %v, want it queued for the slot the quick requests free", r.err)
	case err := <-queued:
		if err != nil {
			t.Fatalf("the request never queued: %v", err)
		}
	}
	clock.Advance(50 * time.Millisecond)
	short.Release()
	r := recv(t, ch)
	if r.err != nil {
		t.Fatalf("queued request: %v, want the freed slot", r.err)
	}
	r.p.Release()
}

// A permit marked as an upgrade keeps its slot but leaves the estimates:
// a WebSocket open for ten minutes neither makes the lane look hung nor
// counts its ten minutes as a service time when it closes.
func TestUpgradedPermitLeavesEstimates(t *testing.T) {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2, Queue: 10, QueueTimeout: 5 * time.Second}
	c, clock := newTest(t, l)
	p := mustAcquire(t, c, Core)
	clock.Advance(50 * time.Millisecond)
	p.Release() // pages take 50 ms
	ws := mustAcquire(t, c, Core)
	ws.Upgraded()
	ws.Upgraded() // idempotent
	clock.Advance(10 * time.Minute)
	if got := c.Snapshot().Lanes[Core].InFlight; got != 1 {
		t.Fatalf("in flight with the upgrade open: %d, want 1 (it keeps its slot)", got)
	}
	page := mustAcquire(t, c, Core) // the lane is at its cap
	// One slot turns over, at 50 ms: position 1 waits about 50 ms, not
	// ten minutes.
	if got := c.expectedWait(Core, 1, c.state.Load(), clock.Now()); got != 50*time.Millisecond {
		t.Fatalf("expected wait behind an open upgrade: %s, want 50ms", got)
	}
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	ws.Release()
	r := recv(t, ch)
	if r.err != nil {
		t.Fatalf("queued request: %v, want the upgrade's slot", r.err)
	}
	if got := c.Snapshot().Lanes[Core].ServiceTime; got != 50*time.Millisecond {
		t.Errorf("service time after the upgrade closed: %s, want still 50ms", got)
	}
	ws.Upgraded() // after Release: nothing
	ws.Release()
	r.p.Release()
	page.Release()
	var nilPermit *Permit
	nilPermit.Upgraded()
	if n := c.lanes[Core].running.Load(); n != 0 {
		t.Errorf("running at the end: %d, want 0", n)
	}
	if s := c.state.Load(); s != 0 {
		t.Errorf("state at the end: %#x, want 0", s)
	}
}

// A failed login (an instant 502 from a dead upstream, an app's 500) does
// not count as a completion or a service time: logins failing at once must
// not make the line look thousands of times faster than the app is.
func TestFailedPermitCountsNoCompletion(t *testing.T) {
	c, clock := newTest(t, testLimits())
	for range 5 {
		p := mustAcquire(t, c, Login)
		clock.Advance(time.Millisecond)
		p.Failed()
		p.Release()
	}
	if rate := c.room.rate(clock.Now()); rate != 0 {
		t.Fatalf("completion rate after failed logins: %g/s, want 0", rate)
	}
	if svc := c.Snapshot().Lanes[Login].ServiceTime; svc != 0 {
		t.Fatalf("service time after failed logins: %s, want none", svc)
	}
	for range 3 {
		p := mustAcquire(t, c, Login)
		clock.Advance(500 * time.Millisecond)
		p.Release()
	}
	if rate := c.room.rate(clock.Now()); rate < 1.5 || rate > 2.5 {
		t.Fatalf("completion rate of logins of 0.5 s each: %g/s, want about 2", rate)
	}
	var nilPermit *Permit
	nilPermit.Failed() // safe
}

// A failed request is not progress either: while the app hangs on one
// request and fails the others, waits must still look as long as the hang.
func TestFailedPermitIsNotProgress(t *testing.T) {
	c, clock := newTest(t, testLimits())
	p := mustAcquire(t, c, Core)
	clock.Advance(100 * time.Millisecond)
	p.Release() // service time 100 ms
	hung := mustAcquire(t, c, Core)
	failing := mustAcquire(t, c, Core)
	clock.Advance(3 * time.Second)
	failing.Failed()
	failing.Release()
	if got := c.expectedWait(Core, 1, c.state.Load(), clock.Now()); got < 2*time.Second {
		t.Fatalf("expected wait with the app hung for 3 s: %s, want it to show the hang", got)
	}
	hung.Release()
}
