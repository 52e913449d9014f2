package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/lanegate/lanegate/session/redistest"
)

// TestRedisFaults checks that Renew fails within its context's deadline
// when Redis hangs, is cut off or is down; that the grant it returns then
// is the member's last one cut to its in flight, until the same expiry;
// and that renewals work again once Redis is back, relearning the fleet
// when Redis came back empty.
func TestRedisFaults(t *testing.T) {
	srv := redistest.Start(t)
	fp := redistest.NewFaultProxy(t, srv.Addr())
	client := newClient(t, fp.Addr())
	clock := clockwork.NewFakeClockAt(t0)
	l, err := NewLeases(client, "faults", testLease, clock, ClockTime())
	if err != nil {
		t.Fatalf("NewLeases: %v", err)
	}
	lim := readmeLimits()
	renew := func(timeout time.Duration, d Demand) (Grant, time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		g, err := l.Renew(ctx, "a", lim, d, Pace{})
		return g, time.Since(start), err
	}
	// back renews after a fault has ended: the first call may meet a
	// connection the fault closed (lanegate's clients do not retry).
	back := func(d Demand) Grant {
		t.Helper()
		var err error
		for range 3 {
			var g Grant
			if g, _, err = renew(time.Second, d); err == nil {
				return g
			}
		}
		t.Fatalf("Renew after the fault: %v", err)
		return Grant{}
	}

	busy := queued(100, 0, 0)
	back(busy)
	clock.Advance(testLease)
	held := back(busy)
	if held.Lane[core].Max != 14 {
		t.Fatalf("before the faults: got core %d, want 14", held.Lane[core].Max)
	}
	var d Demand
	d[core] = LaneDemand{InFlight: 5, Queued: 50}
	cut := func(what string, g Grant, err error, took, within time.Duration) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: Renew succeeded", what)
		}
		if took > within {
			t.Errorf("%s: Renew failed after %s, want within %s", what, took, within)
		}
		if g.Lane[core].Max != 5 || g.Budget != 5 || !g.Expires.Equal(held.Expires) || g.Members != 1 {
			t.Errorf("%s: got %+v; want the last grant cut to the 5 in flight, expiring at %v, 1 member", what, g, held.Expires)
		}
		t.Logf("%s: %v after %s", what, err, took)
	}

	// Redis hangs: the deadline ends the call.
	fp.SetLatency(10*time.Second, 0)
	g, took, err := renew(200*time.Millisecond, d)
	cut("hang", g, err, took, time.Second)
	fp.Heal()
	if g := back(d); g.Lane[core].Max != 14 || g.Learning {
		t.Fatalf("after the hang: got core %d, learning %v; want 14, false", g.Lane[core].Max, g.Learning)
	}

	// Redis cut off: connections refused, the call fails at once.
	held = back(busy)
	fp.Cut()
	g, took, err = renew(5*time.Second, d)
	cut("cut", g, err, took, time.Second)
	// Past its expiry, the grant is over, and so is what was left of it.
	clock.Advance(testLease)
	if g, _, err := renew(time.Second, d); err == nil || g.Valid(clock.Now()) {
		t.Errorf("cut past the lease: got %+v, %v; want an error and an expired grant", g, err)
	}
	fp.Heal()
	back(busy)
	clock.Advance(testLease) // the fleet is new again: its epoch passes
	held = back(busy)

	// Redis down, then back empty.
	srv.Stop()
	g, took, err = renew(5*time.Second, d)
	cut("down", g, err, took, time.Second)
	srv.Restart()
	g = back(busy)
	if !g.Learning || g.Lane[core].Max > 5 {
		t.Fatalf("after a restart: got core %d, learning %v; want at most the 5 kept, true", g.Lane[core].Max, g.Learning)
	}
	clock.Advance(testLease)
	if g := back(busy); g.Learning || g.Lane[core].Max != 14 {
		t.Fatalf("a lease after the restart: got core %d, learning %v; want 14, false", g.Lane[core].Max, g.Learning)
	}
}

// TestRedisTime checks the default: leases timed by Redis's clock, and the
// member's own expiry no later than the fleet's.
func TestRedisTime(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	l, err := NewLeases(client, "redis-time", testLease, nil)
	if err != nil {
		t.Fatalf("NewLeases: %v", err)
	}
	ctx := context.Background()
	// A fleet whose learning is long over: its epoch is the epoch.
	if err := client.HSet(ctx, l.Key(), "epoch", "0").Err(); err != nil {
		t.Fatalf("HSET: %v", err)
	}
	before, err := client.Time(ctx).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	local := time.Now()
	g, err := l.Renew(ctx, "a", readmeLimits(), queued(100, 0, 0), Pace{})
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	after, err := client.Time(ctx).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	if g.Lane[core].Max != 14 || g.Learning {
		t.Fatalf("got core %d, learning %v; want 14, false", g.Lane[core].Max, g.Learning)
	}
	if g.Expires.Before(local.Add(testLease)) || g.Expires.After(time.Now().Add(testLease)) {
		t.Errorf("expires %v: want the call's start plus the lease", g.Expires)
	}
	st := readState(t, l, client)
	if len(st.entries) != 1 {
		t.Fatalf("got %d leases, want 1", len(st.entries))
	}
	e := st.entries[0]
	lo, hi := before.UnixMilli()+testLease.Milliseconds(), after.UnixMilli()+testLease.Milliseconds()
	if e.expires < lo || e.expires > hi {
		t.Errorf("stored expiry %d: want between Redis's TIME before and after plus the lease, %d to %d", e.expires, lo, hi)
	}
	if g.Expires.UnixMilli() > e.expires {
		t.Errorf("the member's expiry %d is later than the fleet's %d", g.Expires.UnixMilli(), e.expires)
	}
	ms, err := l.Members(ctx)
	if err != nil {
		t.Fatalf("Members: %v", err)
	}
	if len(ms) != 1 || ms[0].Age < 0 || ms[0].Age > time.Second || ms[0].Remaining > testLease {
		t.Errorf("got members %+v, want a, renewed just now", ms)
	}
}
