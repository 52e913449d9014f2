package admission

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// anonLimits: one lane that matters, core with 2 slots; anonymous requests
// may hold at most 1 of them.
func anonLimits() Limits {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2, Queue: 10, QueueTimeout: 5 * time.Second}
	l.AnonMax = 1
	return l
}

func enqueueReq(t *testing.T, c *Controller, clock *clockwork.FakeClock, r Request, waitersBefore int) <-chan result {
	t.Helper()
	ch := make(chan result, 1)
	go func() {
		p, err := c.Acquire(context.Background(), r)
		ch <- result{p, err}
	}()
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := clock.BlockUntilContext(bctx, waitersBefore+1); err != nil {
		t.Fatalf("%+v never queued: %v", r, err)
	}
	return ch
}

func TestAnonymousCap(t *testing.T) {
	c, clock := newTest(t, anonLimits())
	anon := Request{Lane: Core, Anonymous: true}
	a, err := c.Acquire(context.Background(), anon)
	if err != nil {
		t.Fatal(err)
	}
	// The second anonymous request waits although a core slot is free:
	// that slot is kept for logged-in users.
	waiting := enqueueReq(t, c, clock, anon, 0)
	if snap := c.Snapshot(); snap.AnonInFlight != 1 || snap.AnonQueued != 1 || snap.Lanes[Core].InFlight != 1 {
		t.Fatalf("snapshot = %+v, want 1 anonymous in flight and 1 queued", snap)
	}
	auth := mustAcquire(t, c, Core)
	a.Release()
	r := recv(t, waiting)
	if r.err != nil {
		t.Fatalf("queued anonymous request: %v", r.err)
	}
	if snap := c.Snapshot(); snap.AnonInFlight != 1 || snap.Lanes[Core].InFlight != 2 {
		t.Fatalf("after hand-over: %+v", snap)
	}
	r.p.Release()
	auth.Release()
	if s := c.state.Load(); s != 0 {
		t.Fatalf("state = %#x, want 0", s)
	}
}

func TestAuthenticatedServedBeforeAnonymous(t *testing.T) {
	l := anonLimits()
	l.AnonMax = 0 // no cap: only the order is under test
	c, clock := newTest(t, l)
	p1 := mustAcquire(t, c, Core)
	p2 := mustAcquire(t, c, Core)
	// Anonymous arrivals first, then an authenticated one.
	anon1 := enqueueReq(t, c, clock, Request{Lane: Core, Anonymous: true}, 0)
	anon2 := enqueueReq(t, c, clock, Request{Lane: Core, Anonymous: true}, 1)
	auth := enqueueReq(t, c, clock, Request{Lane: Core}, 2)

	p1.Release()
	first := recv(t, auth)
	if first.err != nil {
		t.Fatalf("authenticated waiter: %v", first.err)
	}
	select {
	case r := <-anon1:
		t.Fatalf("anonymous waiter admitted before the authenticated one: %+v", r)
	default:
	}
	p2.Release()
	if r := recv(t, anon1); r.err != nil {
		t.Fatalf("first anonymous waiter: %v", r.err)
	} else {
		r.p.Release()
	}
	if r := recv(t, anon2); r.err != nil {
		t.Fatalf("second anonymous waiter: %v", r.err)
	} else {
		r.p.Release()
	}
	first.p.Release()
	if s := c.state.Load(); s != 0 {
		t.Fatalf("state = %#x, want 0", s)
	}
}

func TestAuthenticatedArrivalOvertakesQueuedAnonymous(t *testing.T) {
	c, clock := newTest(t, anonLimits())
	anon := Request{Lane: Core, Anonymous: true}
	a, err := c.Acquire(context.Background(), anon)
	if err != nil {
		t.Fatal(err)
	}
	waiting := enqueueReq(t, c, clock, anon, 0)
	// A logged-in user arriving now is not behind the anonymous queue.
	p := mustAcquire(t, c, Core)
	p.Release()
	a.Release()
	if r := recv(t, waiting); r.err != nil {
		t.Fatal(r.err)
	} else {
		r.p.Release()
	}
}

func TestAnonymousTimesOutAndIsCounted(t *testing.T) {
	c, clock := newTest(t, anonLimits())
	anon := Request{Lane: Core, Anonymous: true}
	a, err := c.Acquire(context.Background(), anon)
	if err != nil {
		t.Fatal(err)
	}
	waiting := enqueueReq(t, c, clock, anon, 0)
	clock.Advance(5 * time.Second)
	r := recv(t, waiting)
	if !errors.Is(r.err, ErrQueueTimeout) {
		t.Fatalf("got %v, want queue timeout", r.err)
	}
	a.Release()
	snap := c.Snapshot()
	if snap.AnonQueued != 0 || snap.AnonInFlight != 0 || snap.Lanes[Core].Decisions[QueueTimeout] != 1 {
		t.Fatalf("snapshot = %+v", snap)
	}
}

func TestAnonymousIgnoredOutsideCore(t *testing.T) {
	l := testLimits()
	l.AnonMax = 1
	c, _ := newTest(t, l)
	var ps []*Permit
	for range 3 {
		p, err := c.Acquire(context.Background(), Request{Lane: Login, Anonymous: true})
		if err != nil {
			t.Fatalf("anonymous login: %v", err)
		}
		ps = append(ps, p)
	}
	if snap := c.Snapshot(); snap.AnonInFlight != 0 {
		t.Errorf("login requests counted as anonymous core: %d", snap.AnonInFlight)
	}
	for _, p := range ps {
		p.Release()
	}
}

func TestAnonymousPassAndShadowCounted(t *testing.T) {
	c, _ := newTest(t, anonLimits())
	anon := Request{Lane: Core, Anonymous: true}
	p := c.Pass(anon)
	d, q := c.Shadow(anon)
	if d != ShadowQueued {
		t.Errorf("shadow decision over the anonymous cap = %s, want %s", d, ShadowQueued)
	}
	if snap := c.Snapshot(); snap.AnonInFlight != 2 {
		t.Errorf("anonymous in flight = %d, want 2", snap.AnonInFlight)
	}
	p.Release()
	q.Release()
	if s := c.state.Load(); s != 0 {
		t.Fatalf("state = %#x, want 0", s)
	}
}

func TestValidateAnonMax(t *testing.T) {
	l := anonLimits()
	l.AnonMax = 3
	if err := l.Validate(); err == nil {
		t.Error("AnonMax above the core max accepted")
	}
	l.AnonMax = -1
	if err := l.Validate(); err == nil {
		t.Error("negative AnonMax accepted")
	}
}
