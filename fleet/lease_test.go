package fleet

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// TestAloneGetsWholeBudget checks that a lone member is granted the whole
// budget its demand can use, under each lane's max, and that a lane with no
// demand keeps its reservation free rather than lending it.
func TestAloneGetsWholeBudget(t *testing.T) {
	f := newFixture(t)
	f.warm("a")

	// Busy in every lane: the whole budget, each lane under its max.
	g := f.renew("a", queued(100, 100, 100))
	if g.Budget != 16 || g.Members != 1 || g.Learning {
		t.Fatalf("busy alone: got budget %d, members %d, learning %v; want 16, 1, false", g.Budget, g.Members, g.Learning)
	}
	if got, want := lanesOf(g), [3]int{12, 2, 2}; got != want {
		t.Errorf("busy alone: got core, login, export %v, want %v", got, want)
	}
	for _, l := range admission.Lanes() {
		if g.Lane[l].Max > f.lim.Lane[l].Max || g.Lane[l].Reserved > g.Lane[l].Max {
			t.Errorf("busy alone, %s: got max %d, reserved %d; lane max %d", l, g.Lane[l].Max, g.Lane[l].Reserved, f.lim.Lane[l].Max)
		}
	}
	if g.Lane[login].Reserved != 2 || g.Lane[core].Reserved != 8 {
		t.Errorf("busy alone: got login, core reserved %d, %d; want 2, 8", g.Lane[login].Reserved, g.Lane[core].Reserved)
	}
	if want := f.clock.Now().Add(testLease); !g.Expires.Equal(want) {
		t.Errorf("expires: got %v, want %v", g.Expires, want)
	}

	// Core only: everything but login's reservation.
	g = f.renew("a", queued(100, 0, 0))
	if got, want := lanesOf(g), [3]int{14, 0, 0}; got != want {
		t.Errorf("core alone: got core, login, export %v, want %v", got, want)
	}

	// Export only: no more than its max; the core lane, where every
	// member keeps a floor for its next page, has the rest.
	g = f.renew("a", queued(0, 0, 100))
	if got, want := lanesOf(g), [3]int{10, 0, 4}; got != want {
		t.Errorf("export alone: got core, login, export %v, want %v", got, want)
	}

	// Idle: the floor lane (core) gets what a core request could use.
	g = f.renew("a", Demand{})
	if got, want := lanesOf(g), [3]int{14, 0, 0}; got != want {
		t.Errorf("idle alone: got core, login, export %v, want %v", got, want)
	}
}

// TestNewFleetLearns checks that a fleet Redis does not know grants nothing
// for one lease: its members may hold grants it has no record of.
func TestNewFleetLearns(t *testing.T) {
	f := newFixture(t)
	g := f.renew("a", queued(10, 0, 0))
	if g.Budget != 0 || !g.Learning {
		t.Fatalf("first renewal: got budget %d, learning %v; want 0, true", g.Budget, g.Learning)
	}
	f.clock.Advance(testLease - time.Millisecond)
	if g = f.renew("a", queued(10, 0, 0)); g.Budget != 0 || !g.Learning {
		t.Fatalf("a millisecond before the lease has passed: got budget %d, learning %v; want 0, true", g.Budget, g.Learning)
	}
	f.clock.Advance(time.Millisecond)
	if g = f.renew("a", queued(10, 0, 0)); g.Budget != 14 || g.Learning {
		t.Fatalf("a lease later: got budget %d, learning %v; want 14, false", g.Budget, g.Learning)
	}
}

// TestStormMovesCapacity checks that a storm on one member of three moves
// most of the capacity to it within one renewal of each: the others shrink
// at their renewals, and it grows at its next.
func TestStormMovesCapacity(t *testing.T) {
	f := newFixture(t)
	f.warm("a", "b", "c")
	// Idle, the three share core: the first renewal of a alone took
	// everything, so it takes a round for the shares to settle.
	for range 2 {
		for _, m := range []string{"a", "b", "c"} {
			f.renew(m, Demand{})
		}
	}
	got := map[string]int{}
	for _, m := range []string{"a", "b", "c"} {
		got[m] = f.renew(m, Demand{}).Lane[core].Max
	}
	if got["a"] != 5 || got["b"] != 5 || got["c"] != 4 {
		t.Fatalf("idle: got core grants %v, want a 5, b 5, c 4", got)
	}

	storm := queued(200, 0, 0)
	if g := f.renew("a", storm); g.Lane[core].Max != 5 {
		t.Fatalf("storm, a's first renewal: got core %d, want 5 (the others hold the rest)", g.Lane[core].Max)
	}
	for _, m := range []string{"b", "c"} {
		if g := f.renew(m, Demand{}); g.Lane[core].Max != 1 {
			t.Fatalf("storm, %s: got core %d, want 1 (its floor)", m, g.Lane[core].Max)
		}
	}
	if g := f.renew("a", storm); g.Lane[core].Max != 12 {
		t.Fatalf("storm, a's next renewal: got core %d, want 12 of 14", g.Lane[core].Max)
	}

	// The storm ends: a shrinks at once, the others grow back.
	f.renew("a", Demand{})
	f.renew("b", Demand{})
	f.renew("c", Demand{})
	if g := f.renew("a", Demand{}); g.Lane[core].Max != 5 {
		t.Errorf("after the storm: got a's core %d, want 5", g.Lane[core].Max)
	}
}

// TestDeadMemberShareTakenOver checks that a member that stops renewing
// keeps its share until its lease expires, and not a millisecond longer.
func TestDeadMemberShareTakenOver(t *testing.T) {
	f := newFixture(t)
	f.warm("a", "b")
	for range 2 {
		f.renew("a", Demand{})
		f.renew("b", Demand{})
	}
	bLast := f.clock.Now()
	busy := queued(100, 0, 0)
	if g := f.renew("a", busy); g.Lane[core].Max != 7 || g.Members != 2 {
		t.Fatalf("b alive: got a's core %d with %d members, want 7 with 2", g.Lane[core].Max, g.Members)
	}
	f.clock.Advance(testLease - time.Millisecond)
	if g := f.renew("a", busy); g.Lane[core].Max != 7 || g.Members != 2 {
		t.Fatalf("b's lease about to end: got a's core %d with %d members, want 7 with 2", g.Lane[core].Max, g.Members)
	}
	f.clock.Advance(time.Millisecond)
	if f.clock.Now().Sub(bLast) != testLease {
		t.Fatalf("test: b renewed %s ago, want the lease", f.clock.Now().Sub(bLast))
	}
	if g := f.renew("a", busy); g.Lane[core].Max != 14 || g.Members != 1 {
		t.Fatalf("b's lease ended: got a's core %d with %d members, want 14 with 1", g.Lane[core].Max, g.Members)
	}
	if n := f.leases.LastMembers(); n != 1 {
		t.Errorf("LastMembers: got %d, want 1", n)
	}
}

// TestLeaveFreesAtOnce checks that a member that leaves frees its share
// for the next renewal of another.
func TestLeaveFreesAtOnce(t *testing.T) {
	f := newFixture(t)
	f.warm("a", "b")
	for range 2 {
		f.renew("a", Demand{})
		f.renew("b", Demand{})
	}
	if err := f.leases.Leave(context.Background(), "b"); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if g := f.renew("a", queued(100, 0, 0)); g.Lane[core].Max != 14 || g.Members != 1 {
		t.Fatalf("after b left: got a's core %d with %d members, want 14 with 1", g.Lane[core].Max, g.Members)
	}
	// Leaving twice, or a member never seen, is no error.
	if err := f.leases.Leave(context.Background(), "b"); err != nil {
		t.Errorf("Leave again: %v", err)
	}
	// b comes back as a new member, with nothing.
	if g := f.renew("b", Demand{}); g.Budget != 0 || g.Learning {
		t.Errorf("b back: got budget %d, learning %v; want 0 (a holds all), false", g.Budget, g.Learning)
	}
}

// TestReservationKeptForLogin checks that with all demand in core, no
// member is granted login's reserved slots, and that a login arriving at
// any member gets them at its next renewal without anyone shrinking.
func TestReservationKeptForLogin(t *testing.T) {
	f := newFixture(t)
	members := []string{"a", "b", "c"}
	f.warm(members...)
	for range 3 {
		for _, m := range members {
			g := f.renew(m, queued(50, 0, 0))
			if g.Lane[login].Max != 0 {
				t.Fatalf("%s: got login %d with no login demand", m, g.Lane[login].Max)
			}
		}
		sum := 0
		for _, e := range f.state().entries {
			sum += e.holding(core)
		}
		if sum > 14 {
			t.Fatalf("core holds %d, more than the budget less login's reservation (14)", sum)
		}
	}
	g := f.renew("c", queued(50, 1, 0))
	if g.Lane[login].Max < 1 || g.Lane[login].Reserved < 1 {
		t.Fatalf("a login at c: got login max %d, reserved %d; want at least 1", g.Lane[login].Max, g.Lane[login].Reserved)
	}
}

// TestLoginMaxFleetWide checks that the login lane's max holds across the
// fleet: three members with logins waiting hold at most its two slots.
func TestLoginMaxFleetWide(t *testing.T) {
	f := newFixture(t)
	members := []string{"a", "b", "c"}
	f.warm(members...)
	for round := range 4 {
		for _, m := range members {
			f.renew(m, queued(0, 50, 0)) // check() holds every lane within its max
		}
		total := 0
		for _, e := range f.state().entries {
			if e.granted[login] > 1 && round > 0 {
				t.Errorf("round %d: %s holds %d logins of 2 with three members waiting", round, e.id, e.granted[login])
			}
			total += e.granted[login]
		}
		if round > 0 && total != 2 {
			t.Errorf("round %d: got %d logins granted, want the max, 2", round, total)
		}
	}
}

// TestInFlightHoldsCapacity checks that a member's in flight above its
// shrunk grant is counted until it reports less: nobody grows into it.
func TestInFlightHoldsCapacity(t *testing.T) {
	f := newFixture(t)
	f.warm("a", "b")
	busy := func(inflight, q int) Demand {
		var d Demand
		d[core] = LaneDemand{InFlight: inflight, Queued: q}
		return d
	}
	if g := f.renew("a", busy(0, 100)); g.Lane[core].Max != 14 {
		t.Fatalf("a alone: got core %d, want 14", g.Lane[core].Max)
	}
	if g := f.renew("b", busy(0, 20)); g.Budget != 0 {
		t.Fatalf("b while a holds all: got budget %d, want 0", g.Budget)
	}
	// a shrinks to its share, with 14 still in flight.
	g := f.renew("a", busy(14, 0))
	if g.Lane[core].Max >= 14 {
		t.Fatalf("a with b waiting: got core %d, want less than 14", g.Lane[core].Max)
	}
	if g := f.renew("b", busy(0, 20)); g.Budget != 0 {
		t.Fatalf("b while a has 14 in flight: got budget %d, want 0", g.Budget)
	}
	f.renew("a", busy(10, 0))
	if g := f.renew("b", busy(0, 20)); g.Lane[core].Max != 4 {
		t.Fatalf("b while a has 10 in flight: got core %d, want 4", g.Lane[core].Max)
	}
	a := f.renew("a", busy(0, 0)).Lane[core].Max
	if g := f.renew("b", busy(0, 20)); g.Lane[core].Max != 14-a {
		t.Fatalf("b once a drained: got core %d, want %d", g.Lane[core].Max, 14-a)
	}
}

// TestRelearnsAfterLostWrites checks the learning period after Redis loses
// the fleet (emptied) or some of its writes (an older value back): nobody
// grows beyond what it holds for a lease, a newcomer gets nothing, and
// growth resumes after.
func TestRelearnsAfterLostWrites(t *testing.T) {
	f := newFixture(t)
	f.warm("a", "b")
	for range 2 {
		f.renew("a", queued(100, 0, 0))
		f.renew("b", Demand{})
	}
	a := f.renew("a", queued(100, 0, 0))
	b := f.renew("b", Demand{})
	if a.Lane[core].Max != 13 || b.Lane[core].Max != 1 {
		t.Fatalf("settled: got a %d, b %d; want 13, 1", a.Lane[core].Max, b.Lane[core].Max)
	}

	ctx := context.Background()
	if err := f.client.FlushAll(ctx).Err(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	// b, first after the loss, would get 13 alone: it keeps its 1.
	f.clock.Advance(100 * time.Millisecond)
	if g := f.renew("b", queued(100, 0, 0)); g.Lane[core].Max != 1 || !g.Learning {
		t.Fatalf("b after the loss: got core %d, learning %v; want 1, true", g.Lane[core].Max, g.Learning)
	}
	if g := f.renew("c", queued(100, 0, 0)); g.Budget != 0 || !g.Learning {
		t.Fatalf("newcomer c while learning: got budget %d, learning %v; want 0, true", g.Budget, g.Learning)
	}
	f.clock.Advance(100 * time.Millisecond)
	if g := f.renew("a", queued(100, 0, 0)); g.Lane[core].Max > 13 || !g.Learning {
		t.Fatalf("a after the loss: got core %d, learning %v; want at most 13, true", g.Lane[core].Max, g.Learning)
	}
	// a came back holding more than the fleet knew: learning starts over
	// from its renewal, and lasts a lease from then.
	for range 4 {
		f.clock.Advance(testLease / 4)
		for _, m := range []string{"a", "b", "c"} {
			f.renew(m, queued(100, 0, 0))
		}
	}
	g := f.renew("c", queued(100, 0, 0))
	if g.Learning || g.Budget == 0 {
		t.Fatalf("a lease later: got c's budget %d, learning %v; want some, false", g.Budget, g.Learning)
	}

	// A failover that brings back an older, smaller value of a's lease.
	st := f.state()
	var old entry
	for _, e := range st.entries {
		if e.id == "a" {
			old = e
		}
	}
	held := f.renew("a", queued(100, 0, 0)).Lane[core].Max
	if held < 2 {
		t.Fatalf("test: a holds %d core, want at least 2", held)
	}
	old.granted[core], old.reserved[core], old.inflight[core] = 1, 1, 0
	if err := f.client.HSet(ctx, f.leases.key, memberPrefix+"a", encodeTestEntry(old)).Err(); err != nil {
		t.Fatalf("HSET: %v", err)
	}
	if g := f.renew("b", queued(100, 0, 0)); g.Learning {
		t.Fatalf("b, before a noticed: got learning, want not")
	}
	if g := f.renew("a", queued(100, 0, 0)); !g.Learning || g.Lane[core].Max > held {
		t.Fatalf("a, holding %d where the fleet says 1: got core %d, learning %v; want at most %d, true", held, g.Lane[core].Max, g.Learning, held)
	}
}

// TestRenewValidates checks that bad arguments are refused before Redis,
// each error naming what is wrong.
func TestRenewValidates(t *testing.T) {
	f := newFixture(t)
	bad := func(mod func(*Limits)) Limits {
		l := readmeLimits()
		mod(&l)
		return l
	}
	for _, tc := range []struct {
		name   string
		member string
		lim    Limits
		d      Demand
		want   string
	}{
		{"no member", "", readmeLimits(), Demand{}, "member id"},
		{"long member", strings.Repeat("x", 201), readmeLimits(), Demand{}, "member id"},
		{"zero budget", "a", bad(func(l *Limits) { l.Budget = 0 }), Demand{}, "budget 0"},
		{"huge budget", "a", bad(func(l *Limits) { l.Budget = admission.MaxBudget + 1 }), Demand{}, "budget 4096"},
		{"reserved over max", "a", bad(func(l *Limits) { l.Lane[login].Reserved = 3 }), Demand{}, "login reserved 3 exceeds its max 2"},
		{"max over budget", "a", bad(func(l *Limits) { l.Lane[core].Max = 17 }), Demand{}, "core max 17 exceeds budget 16"},
		{"negative reserved", "a", bad(func(l *Limits) { l.Lane[export].Reserved = -1 }), Demand{}, "export reserved -1"},
		{"reservations over budget", "a", bad(func(l *Limits) { l.Lane[core].Reserved = 15 }), Demand{}, "reservations sum to 17"},
		{"negative demand", "a", readmeLimits(), queued(0, -1, 0), "login demand 0 in flight, -1 queued"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.leases.Renew(context.Background(), tc.member, tc.lim, tc.d, Pace{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	if n := f.client.Exists(context.Background(), f.leases.key).Val(); n != 0 {
		t.Errorf("refused renewals wrote the fleet's key")
	}
}

// TestNewLeasesValidates checks the constructor's refusals.
func TestNewLeasesValidates(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, fleet string
		lease       time.Duration
	}{
		{"empty name", "", time.Second},
		{"brace", "a{b", time.Second},
		{"closing brace", "a}b", time.Second},
		{"long name", strings.Repeat("x", 201), time.Second},
		{"zero lease", "x", 0},
		{"negative lease", "x", -time.Second},
	} {
		if _, err := NewLeases(f.client, tc.fleet, tc.lease, nil); err == nil {
			t.Errorf("%s: NewLeases succeeded", tc.name)
		}
	}
	if _, err := NewLeases(nil, "x", time.Second, nil); err == nil {
		t.Error("nil client: NewLeases succeeded")
	}
	l, err := NewLeases(f.client, "x", 1500*time.Microsecond, nil)
	if err != nil {
		t.Fatalf("NewLeases: %v", err)
	}
	if l.Lease() != 2*time.Millisecond || l.Key() != "lanegate:{x}:lease" {
		t.Errorf("got lease %s, key %q; want 2ms, lanegate:{x}:lease", l.Lease(), l.Key())
	}
}

// TestUnreadableLeaseRefused checks that a value the script cannot read
// (another format, a corrupt write) fails the renewal and changes nothing,
// rather than being counted as free capacity.
func TestUnreadableLeaseRefused(t *testing.T) {
	f := newFixture(t)
	f.warm("a")
	f.renew("a", Demand{})
	ctx := context.Background()
	for _, v := range []string{"2,1,1,0,0,0,0,0,0,0,0,0,0,0,0", "1,2,3", "x", "1,,2,3,4,5,6,7,8,9,10,11,12,13,14"} {
		if err := f.client.HSet(ctx, f.leases.key, memberPrefix+"z", v).Err(); err != nil {
			t.Fatalf("HSET: %v", err)
		}
		before := f.client.HGetAll(ctx, f.leases.key).Val()
		_, err := f.leases.Renew(ctx, "a", f.lim, queued(10, 0, 0), Pace{})
		if err == nil || !strings.Contains(err.Error(), "unreadable lease m:z") {
			t.Fatalf("value %q: got %v, want an unreadable lease error", v, err)
		}
		after := f.client.HGetAll(ctx, f.leases.key).Val()
		if len(before) != len(after) || before[memberPrefix+"a"] != after[memberPrefix+"a"] {
			t.Fatalf("value %q: a failed renewal changed the fleet: %v, then %v", v, before, after)
		}
	}
}

// TestMembers checks what Members shows and that it leaves expired
// members out.
func TestMembers(t *testing.T) {
	f := newFixture(t)
	f.warm("a", "b")
	f.renew("a", queued(7, 1, 0))
	f.renew("b", Demand{})
	f.clock.Advance(300 * time.Millisecond)
	var d Demand
	d[core] = LaneDemand{InFlight: 3, Queued: 4} // within its grant
	d[login] = LaneDemand{InFlight: 0, Queued: 1}
	ga := f.renew("a", d)
	f.clock.Advance(200 * time.Millisecond)

	ms, err := f.leases.Members(context.Background())
	if err != nil {
		t.Fatalf("Members: %v", err)
	}
	if len(ms) != 2 || ms[0].ID != "a" || ms[1].ID != "b" {
		t.Fatalf("got members %+v, want a and b", ms)
	}
	a := ms[0]
	if a.Demand != d || a.Age != 200*time.Millisecond || a.Remaining != testLease-200*time.Millisecond {
		t.Errorf("a: got demand %v, age %s, remaining %s; want %v, 200ms, %s", a.Demand, a.Age, a.Remaining, d, testLease-200*time.Millisecond)
	}
	if a.Lane != ga.Lane {
		t.Errorf("a: got lanes %v, want its grant's %v", a.Lane, ga.Lane)
	}
	if ms[1].Age != 500*time.Millisecond {
		t.Errorf("b: got age %s, want 500ms", ms[1].Age)
	}

	f.clock.Advance(testLease - 500*time.Millisecond)
	ms, err = f.leases.Members(context.Background())
	if err != nil {
		t.Fatalf("Members: %v", err)
	}
	if len(ms) != 1 || ms[0].ID != "a" {
		t.Fatalf("after b's lease: got %+v, want a alone", ms)
	}
	if n := f.leases.LastMembers(); n != 1 {
		t.Errorf("LastMembers: got %d, want 1", n)
	}
}

// TestKeyExpires checks that the fleet's key expires one lease after the
// last lease in it, so an abandoned fleet cleans itself.
func TestKeyExpires(t *testing.T) {
	f := newFixture(t)
	f.renew("a", Demand{})
	ttl, err := f.client.PTTL(context.Background(), f.leases.key).Result()
	if err != nil {
		t.Fatalf("PTTL: %v", err)
	}
	if ttl <= testLease || ttl > 2*testLease {
		t.Errorf("got TTL %s, want between %s and %s", ttl, testLease, 2*testLease)
	}
}

// TestLimitsOf checks that the fleet's limits are read from admission's.
func TestLimitsOf(t *testing.T) {
	var lim admission.Limits
	lim.Budget = 16
	lim.Lane[admission.Login] = admission.LaneLimits{Reserved: 2, Max: 2, Queue: 100}
	lim.Lane[admission.Core] = admission.LaneLimits{Reserved: 8, Max: 16}
	lim.Lane[admission.Export] = admission.LaneLimits{Max: 4}
	if got, want := LimitsOf(lim), readmeLimits(); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// encodeTestEntry writes e as lease.lua does.
func encodeTestEntry(e entry) string {
	n := []int64{entryFormat, e.expires, e.renewed}
	for _, a := range [][lanes]int{e.granted, e.reserved, e.inflight, e.queued} {
		for l := range lanes {
			n = append(n, int64(a[l]))
		}
	}
	n = append(n, e.done, e.arrived)
	s := make([]string, len(n))
	for k, x := range n {
		s[k] = strconv.FormatInt(x, 10)
	}
	return strings.Join(s, ",")
}
