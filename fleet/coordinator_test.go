package fleet

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session/redistest"
)

// stormFleetLimits are the storm benchmark's, shared by the fleet: a pool
// of 8; login reserves 1 of at most 2, core 4 of at most 8, export none
// of at most 2.
func stormFleetLimits() admission.Limits {
	var l admission.Limits
	l.Budget = 8
	l.Lane[admission.Login] = admission.LaneLimits{Reserved: 1, Max: 2, Queue: 64, QueueTimeout: 5 * time.Second}
	l.Lane[admission.Core] = admission.LaneLimits{Reserved: 4, Max: 8, Queue: 64, QueueTimeout: 5 * time.Second}
	l.Lane[admission.Export] = admission.LaneLimits{Reserved: 0, Max: 2, Queue: 4, QueueTimeout: 5 * time.Second}
	return l
}

// replica is one in-process lanegate of a fleet: its controller and the
// coordinator that renews its lease.
type replica struct {
	ctrl *admission.Controller
	co   *Coordinator
	stop func() // kills the coordinator without leaving, as SIGKILL would
}

// killed is a lease store for a replica that dies without leaving, as a
// process killed with SIGKILL does.
type killed struct{ *Leases }

func (killed) Leave(context.Context, string) error { return nil }

func startReplica(t *testing.T, leases Renewer, id string, lim admission.Limits) *replica {
	t.Helper()
	ctrl, err := admission.New(lim)
	if err != nil {
		t.Fatal(err)
	}
	co := NewCoordinator(leases, ctrl, CoordinatorOptions{
		Member: id, Limits: func() Limits { return LimitsOf(lim) },
		Renew: 50 * time.Millisecond, Timeout: 200 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		co.Run(ctx)
	}()
	var once sync.Once
	r := &replica{ctrl: ctrl, co: co, stop: func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}}
	t.Cleanup(r.stop)
	t.Cleanup(ctrl.Close)
	return r
}

// eventually polls cond until it holds, for at most d: for states that
// follow renewals on a real clock, which nothing else signals.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		<-tick.C
	}
}

// pool stands for the database pool behind the fleet: it counts the
// requests the replicas admit, all together, and keeps the peak.
type pool struct {
	inFlight, peak atomic.Int64
	served         atomic.Int64
}

func (p *pool) enter() {
	n := p.inFlight.Add(1)
	for {
		old := p.peak.Load()
		if n <= old || p.peak.CompareAndSwap(old, n) {
			return
		}
	}
}

func (p *pool) leave() {
	p.inFlight.Add(-1)
	p.served.Add(1)
}

// storm runs clients against the replicas pick chooses, for d, each
// holding its slot a few milliseconds, as a request holds a connection.
func storm(t *testing.T, p *pool, rs []*replica, clients int, d time.Duration, pick func(i, n int) *replica) {
	t.Helper()
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for n := 0; time.Now().Before(end); n++ {
				r := pick(i, n)
				lane := admission.Core
				if rng.IntN(5) == 0 {
					lane = admission.Login
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				permit, err := r.ctrl.Acquire(ctx, admission.Request{Lane: lane, Client: "c"})
				cancel()
				if err != nil {
					continue // shed: the client tries again
				}
				p.enter()
				// The request's work: holding a pooled connection.
				time.Sleep(time.Duration(1+rng.IntN(8)) * time.Millisecond)
				p.leave()
				permit.Release()
			}
		}()
	}
	wg.Wait()
}

// Three replicas share one budget of 8 through a real Redis: whether the
// storm is spread round-robin or lands on one replica, and while one
// replica dies without leaving, the requests they admit together never
// exceed 8, and the dead replica's share is taken over within the lease.
func TestFleetNeverExceedsItsBudget(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	const lease = 600 * time.Millisecond
	leases, err := NewLeases(client, "peak", lease, clockwork.NewRealClock())
	if err != nil {
		t.Fatal(err)
	}
	lim := stormFleetLimits()
	rs := []*replica{
		startReplica(t, leases, "a", lim),
		startReplica(t, leases, "b", lim),
		startReplica(t, killed{leases}, "c", lim),
	}
	// A new fleet learns for one lease before any grant grows.
	eventually(t, 5*time.Second, "the fleet's first grants", func() bool {
		for _, r := range rs {
			if r.co.Status().Grant.Budget == 0 {
				return false
			}
		}
		return true
	})
	var p pool
	storm(t, &p, rs, 24, time.Second, func(i, n int) *replica { return rs[(i+n)%3] })
	if peak := p.peak.Load(); peak > 8 {
		t.Fatalf("round-robin storm: %d in flight at once across the fleet, budget 8", peak)
	}
	roundRobin := p.served.Load()

	// The storm moves to one replica: its share follows.
	var most atomic.Int64
	sampled := make(chan struct{})
	stormDone := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stormDone:
				return
			case <-tick.C:
				if b := int64(rs[0].co.Status().Grant.Budget); b > most.Load() {
					most.Store(b)
				}
			}
		}
	}()
	storm(t, &p, rs, 24, time.Second, func(int, int) *replica { return rs[0] })
	close(stormDone)
	<-sampled
	if peak := p.peak.Load(); peak > 8 {
		t.Fatalf("storm on one replica: %d in flight at once, budget 8", peak)
	}
	if got := most.Load(); got < 5 {
		t.Errorf("the stormed replica's share during a second of storm: at most %d of 8, want most", got)
	}

	// c dies without leaving; a and b take its share after the lease,
	// not before: until then the fleet counts it as c's.
	if g := rs[2].co.Status().Grant; g.Budget < 1 {
		t.Fatalf("c holds nothing before it dies: %+v", g)
	}
	before, _ := leases.Members(context.Background())
	rs[2].stop()
	// Its lease runs from its last renewal, which a loaded machine may
	// have delayed well before the stop.
	died := rs[2].co.Status().At
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Longer than the wait below: a and b must have demand all the
		// while, or an idle pair never needs c's share.
		storm(t, &p, rs[:2], 24, 2*lease+2*time.Second, func(i, n int) *replica { return rs[(i+n)%2] })
	}()
	// Read from Redis, where a and b's shares are read at one moment:
	// their own views may overlap while one has shrunk and the other
	// grown, before the first has its answer.
	eventually(t, 2*lease+time.Second, "a and b taking over c's share", func() bool {
		ms, err := leases.Members(context.Background())
		if err != nil {
			return false
		}
		held := 0
		for _, m := range ms {
			if m.ID == "c" {
				return false
			}
			for _, lg := range m.Lane {
				held += lg.Max
			}
		}
		return held >= 8
	})
	took := time.Since(died)
	after, _ := leases.Members(context.Background())
	<-done
	if peak := p.peak.Load(); peak > 8 {
		t.Fatalf("with a replica killed: %d in flight at once, budget 8", peak)
	}
	// Not before its lease ran out (the wait above bounds the after).
	if took < lease/2 {
		t.Errorf("the dead replica's share was taken over after %s, before its lease (%s) ran out;\nthe fleet when it died: %+v\nwhen its share was taken: %+v", took, lease, before, after)
	}
	t.Logf("peak %d of 8; %d requests round-robin, %d in all; the stormed replica's share up to %d of 8; dead share taken over in %s",
		p.peak.Load(), roundRobin, p.served.Load(), most.Load(), took.Round(time.Millisecond))
}

// renewer is a lease store that fails while down is set, as Leases does:
// returning the previous grant cut to what is in flight.
type renewer struct {
	mu      sync.Mutex
	down    bool
	grant   Grant
	members int
	clock   clockwork.Clock
}

func (r *renewer) Renew(_ context.Context, _ string, _ Limits, d Demand, _ Pace) (Grant, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		g := r.grant
		g.Budget = 0
		for l := range lanes {
			g.Lane[l].Max = min(g.Lane[l].Max, d[l].InFlight)
			g.Lane[l].Reserved = min(g.Lane[l].Reserved, g.Lane[l].Max)
			g.Budget += g.Lane[l].Max
		}
		r.grant = g
		return g, errors.New("redis: connection refused")
	}
	g := Grant{Members: r.members, Expires: r.clock.Now().Add(time.Second)}
	g.Lane[core] = LaneGrant{Max: 3, Reserved: 2}
	g.Lane[login] = LaneGrant{Max: 1, Reserved: 1}
	g.Budget = 4
	r.grant = g
	return g, nil
}

func (r *renewer) Leave(context.Context, string) error { return nil }
func (r *renewer) Members(context.Context) ([]Member, error) {
	return []Member{{ID: "a"}, {ID: "b", Demand: Demand{core: {InFlight: 3}, login: {InFlight: 1}}}}, nil
}
func (r *renewer) LastMembers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.members
}

// When Redis fails, the replica keeps what it has in flight until its
// lease ends, then falls back to the fleet's limits ÷ the last known
// members, says so, and takes its grant again when Redis answers.
func TestCoordinatorFailsStatic(t *testing.T) {
	clock := clockwork.NewFakeClock()
	ctrl, err := admission.New(stormFleetLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	rn := &renewer{members: 2, clock: clock}
	co := NewCoordinator(rn, ctrl, CoordinatorOptions{
		Member: "a", Limits: func() Limits { return LimitsOf(stormFleetLimits()) },
		Renew: 250 * time.Millisecond, Timeout: time.Second, Clock: clock,
	})
	renewed := make(chan struct{}, 1)
	co.afterRenew = func() {
		select {
		case renewed <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		co.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	next := func() Status {
		t.Helper()
		select {
		case <-renewed:
		case <-time.After(5 * time.Second):
			t.Fatal("no renewal")
		}
		return co.Status()
	}
	advance := func() Status {
		t.Helper()
		clock.Advance(250 * time.Millisecond)
		return next()
	}
	if st := next(); st.State != StateOK || ctrl.Limits().Budget != 4 {
		t.Fatalf("first renewal: %+v, budget %d", st, ctrl.Limits().Budget)
	}
	if got := co.OthersInFlight(); got != 4 {
		t.Fatalf("the other members' in flight: %d, want b's 3 + 1", got)
	}
	p := mustAcquireCore(t, ctrl)
	rn.mu.Lock()
	rn.down = true
	rn.mu.Unlock()
	st := advance()
	if st.State != StateOK || ctrl.Limits().Budget != 1 || ctrl.Limits().Lane[admission.Core].Max != 1 {
		t.Fatalf("a failed renewal within the lease: %+v, limits %+v; want the grant cut to the one in flight", st, ctrl.Limits())
	}
	// The lease (1 s) runs out: fallback, 8 ÷ 2 members.
	for range 4 {
		st = advance()
	}
	if st.State != StateDegraded || !st.Degraded() || ctrl.Limits().Budget != 4 {
		t.Fatalf("after the lease: %+v, budget %d; want degraded on 8 ÷ 2", st, ctrl.Limits().Budget)
	}
	if got := ctrl.Limits().Lane[admission.Login].Max; got != 1 {
		t.Errorf("fallback login max %d, want 2 ÷ 2 = 1", got)
	}
	rn.mu.Lock()
	rn.down = false
	rn.mu.Unlock()
	if st = advance(); st.State != StateOK || st.LastError != "" {
		t.Fatalf("after Redis came back: %+v", st)
	}
	p.Release()
}

func mustAcquireCore(t *testing.T, c *admission.Controller) *admission.Permit {
	t.Helper()
	p, err := c.Acquire(context.Background(), admission.Request{Lane: admission.Core})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFallbackShares(t *testing.T) {
	lim := LimitsOf(stormFleetLimits())
	for _, tc := range []struct {
		members, budget, login, core, export int
	}{
		{0, 8, 2, 8, 2},
		{1, 8, 2, 8, 2},
		{3, 2, 1, 2, 1},
		{20, 1, 1, 1, 1},
	} {
		g := fallback(lim, tc.members)
		if g.Budget != tc.budget || g.Lane[login].Max != tc.login || g.Lane[core].Max != tc.core || g.Lane[export].Max != tc.export {
			t.Errorf("%d members: %+v", tc.members, g)
		}
	}
}

// One replica of three is cut off from Redis in the middle of a storm
// spread round-robin, for three leases: it keeps its share cut to what it
// has in flight, then admits under its fallback share (the fleet's limits ÷
// the 3 members it knew), which the fleet keeps counted for it
// (KeepFallback), so the replicas together never admit more than the
// budget. Once Redis answers again it rejoins and the fleet's budget is
// whole. And while Redis restarts empty under all three, the same holds:
// each falls back, and the fleet relearns before any share grows.
func TestFleetWithinBudgetThroughRedisFaults(t *testing.T) {
	srv := redistest.Start(t)
	fp := redistest.NewFaultProxy(t, srv.Addr())
	const lease = 600 * time.Millisecond
	keep := KeepFallback(10 * lease)
	direct, err := NewLeases(newClient(t, srv.Addr()), "faults", lease, clockwork.NewRealClock(), keep)
	if err != nil {
		t.Fatal(err)
	}
	proxied, err := NewLeases(newClient(t, fp.Addr()), "faults", lease, clockwork.NewRealClock(), keep)
	if err != nil {
		t.Fatal(err)
	}
	lim := stormFleetLimits()
	rs := []*replica{
		startReplica(t, direct, "a", lim),
		startReplica(t, direct, "b", lim),
		startReplica(t, proxied, "c", lim),
	}
	eventually(t, 5*time.Second, "the fleet's first grants", func() bool {
		for _, r := range rs {
			if r.co.Status().Grant.Budget == 0 || r.co.Status().Members != 3 {
				return false
			}
		}
		return true
	})

	var p pool
	done := make(chan struct{})
	go func() {
		defer close(done)
		storm(t, &p, rs, 24, 3*lease+3*time.Second, func(i, n int) *replica { return rs[(i+n)%3] })
	}()
	// Let the storm settle, then cut c off for three leases.
	eventually(t, 2*time.Second, "the storm under way", func() bool { return p.served.Load() > 200 })
	fp.Cut()
	eventually(t, 3*lease, "c on its fallback share", func() bool { return rs[2].co.Status().Degraded() })
	eventually(t, 3*lease, "c admitting under its fallback share", func() bool {
		return rs[2].ctrl.InFlight() > 0
	})
	cutPeak := p.peak.Load()
	time.AfterFunc(2*lease, fp.Heal) // the cut lasts a while longer
	eventually(t, 4*lease+2*time.Second, "c back in the fleet", func() bool {
		return rs[2].co.Status().State == StateOK
	})
	<-done
	if peak := p.peak.Load(); peak > 8 {
		t.Fatalf("with a replica cut off from Redis: %d in flight at once across the fleet, budget 8 (%d by the time it fell back)", peak, cutPeak)
	}

	// Redis restarts empty under all three.
	done = make(chan struct{})
	go func() {
		defer close(done)
		storm(t, &p, rs, 24, 4*lease+2*time.Second, func(i, n int) *replica { return rs[(i+n)%3] })
	}()
	srv.Restart()
	eventually(t, 4*lease+2*time.Second, "the fleet renewing again after Redis restarted", func() bool {
		for _, r := range rs {
			if st := r.co.Status(); st.State != StateOK || st.At.IsZero() {
				return false
			}
		}
		return true
	})
	<-done
	if peak := p.peak.Load(); peak > 8 {
		t.Fatalf("through a Redis restart: %d in flight at once across the fleet, budget 8", peak)
	}
	t.Logf("peak %d of 8 with a replica cut off for %s and through a Redis restart; %d requests served", p.peak.Load(), 3*lease, p.served.Load())
}
