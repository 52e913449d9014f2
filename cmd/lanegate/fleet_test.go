package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/internal/pgbouncertest"
	"github.com/lanegate/lanegate/session/redistest"
)

// fleetEnv puts a lanegate in a fleet named name on srv, with fast
// renewals so a test sees shares move within a fraction of a second.
func fleetEnv(srv *redistest.Server, name, id string) []string {
	return []string{
		"LANEGATE_FLEET=redis",
		"LANEGATE_FLEET_NAME=" + name,
		"LANEGATE_INSTANCE_ID=" + id,
		"LANEGATE_REDIS_URL=redis://" + srv.Addr() + "/0",
		"LANEGATE_TICKET_SECRET=fleet-test-ticket-secret-0123456789abcdef",
		"LANEGATE_FLEET_RENEW=50ms",
		"LANEGATE_FLEET_LEASE=600ms",
		"LANEGATE_BUDGET=6",
	}
}

// Two lanegates in one fleet share one budget: both see both members, and
// their shares never add up to more than the fleet's budget. When one
// stops, it leaves, and the other has all of the budget an idle member
// is given.
func TestFleetOfTwoSharesOneBudget(t *testing.T) {
	ctx := testContext(t)
	srv := redistest.Start(t)
	up := newUpstream(t)
	a := start(ctx, t, append(environ(up.URL), fleetEnv(srv, "two", "a")...))
	b := start(ctx, t, append(environ(up.URL), fleetEnv(srv, "two", "b")...))
	c := newClient(t)

	both := func(st admin.Status) bool {
		return st.Fleet != nil && st.Fleet.State == "ok" && st.Fleet.Members == 2 && st.Fleet.Budget > 0
	}
	sa := pollStatus(ctx, t, c, a, "a in a fleet of two", both)
	sb := pollStatus(ctx, t, c, b, "b in a fleet of two", both)
	if sa.Fleet.Budget+sb.Fleet.Budget > 6 {
		t.Fatalf("shares %d + %d exceed the fleet's budget of 6", sa.Fleet.Budget, sb.Fleet.Budget)
	}
	if sa.Budget > sa.Fleet.Budget || sa.StaticBudget != 6 {
		t.Fatalf("a admits under %d with a share of %d (static %d)", sa.Budget, sa.Fleet.Budget, sa.StaticBudget)
	}
	if len(sa.Fleet.Fleet) != 2 || sa.Fleet.Fleet[0].ID != "a" || sa.Fleet.Fleet[1].ID != "b" {
		t.Fatalf("a's view of the fleet: %+v", sa.Fleet.Fleet)
	}
	if r := do(ctx, c, http.MethodGet, a.proxyURL("/page"), ""); r.status != http.StatusOK {
		t.Fatalf("GET through a: %d %v", r.status, r.err)
	}
	m := do(ctx, c, http.MethodGet, a.adminURL("/metrics"), "")
	for _, want := range []string{`lanegate_fleet_members 2`, `lanegate_fleet_up 1`, `lanegate_fleet_share{lane="core"}`} {
		if !strings.Contains(m.body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	b.cancel()
	if err := b.wait(ctx, t); err != nil {
		t.Fatalf("b: %v", err)
	}
	// Idle, a holds what the fleet gives a member with no demand: every
	// slot but the login reservation, which stays free for a login.
	pollStatus(ctx, t, c, a, "a alone with the fleet's budget", func(st admin.Status) bool {
		return st.Fleet.Members == 1 && st.Fleet.Budget == 5 && st.Fleet.Share["core"].Max == 5
	})
}

// Fleet mode refuses to start without what it needs: Redis, and a ticket
// secret the replicas share.
func TestFleetNeedsRedisAndASharedSecret(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"LANEGATE_FLEET=redis", "LANEGATE_TICKET_SECRET=fleet-test-ticket-secret-0123456789abcdef"}, "LANEGATE_REDIS_URL is required because LANEGATE_FLEET=redis"},
		{[]string{"LANEGATE_FLEET=redis", "LANEGATE_REDIS_URL=redis://127.0.0.1:6379/0"}, "LANEGATE_TICKET_SECRET (or LANEGATE_IDENTITY_SECRET) is required because LANEGATE_FLEET=redis"},
		{[]string{"LANEGATE_FLEET=redis", "LANEGATE_REDIS_URL=redis://127.0.0.1:6379/0", "LANEGATE_WAITING_ROOM=false", "LANEGATE_FLEET_NAME=a{b}"}, `LANEGATE_FLEET_NAME="a{b}"`},
	} {
		_, stderr, err := runOnce(t, append(environ("http://127.0.0.1:8000"), tc.env...), "config")
		if err == nil || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: error %v, stderr %q; want %q", tc.env, err, stderr, tc.want)
		}
	}
}

// In a fleet, the pool watcher narrows the fleet's budget, not each
// replica's: with a background job holding 3 of a pool of 4, the two
// replicas' shares add up to the one connection left.
func TestFleetFollowsThePool(t *testing.T) {
	ctx := testContext(t)
	srv := redistest.Start(t)
	pb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 4})
	up := newUpstream(t)
	env := func(id string) []string {
		e := append(environ(up.URL), fleetEnv(srv, "pool", id)...)
		e = append(e, poolEnv(pb)...)
		return append(e, "LANEGATE_BUDGET=") // sized from the pool: 4
	}
	a := start(ctx, t, env("a"))
	b := start(ctx, t, env("b"))
	c := newClient(t)
	ready := func(st admin.Status) bool {
		return st.Fleet != nil && st.Fleet.State == "ok" && st.Fleet.Members == 2 && st.Pool != nil && st.Pool.State == "ok"
	}
	pollStatus(ctx, t, c, a, "a in the fleet, watching the pool", ready)
	pollStatus(ctx, t, c, b, "b in the fleet, watching the pool", ready)

	hold(ctx, t, pb, 3)
	narrowed := func(st admin.Status) bool { return st.Pool.Others == 3 && st.Pool.EffectiveBudget == 1 }
	pollStatus(ctx, t, c, a, "a seeing the job", narrowed)
	pollStatus(ctx, t, c, b, "b seeing the job", narrowed)
	sa := pollStatus(ctx, t, c, a, "a's share narrowed", func(st admin.Status) bool { return st.Fleet.Budget <= 1 })
	sb := pollStatus(ctx, t, c, b, "b's share narrowed", func(st admin.Status) bool { return st.Fleet.Budget <= 1 })
	if sa.Fleet.Budget+sb.Fleet.Budget > 1 {
		t.Fatalf("shares %d + %d with one connection left", sa.Fleet.Budget, sb.Fleet.Budget)
	}
	if r := do(ctx, c, http.MethodGet, a.proxyURL("/page"), ""); r.status != http.StatusOK && r.status != http.StatusServiceUnavailable {
		t.Fatalf("GET through a: %d %v", r.status, r.err)
	}
}

// A replica told to stop drains before it leaves the fleet: while its
// last request is in flight, the others still count its share as its.
func TestFleetLeavesAfterDraining(t *testing.T) {
	ctx := testContext(t)
	srv := redistest.Start(t)
	up := newUpstream(t)
	a := start(ctx, t, append(environ(up.URL), fleetEnv(srv, "drain", "a")...))
	b := start(ctx, t, append(environ(up.URL), fleetEnv(srv, "drain", "b")...))
	c := newClient(t)
	two := func(st admin.Status) bool { return st.Fleet != nil && st.Fleet.State == "ok" && st.Fleet.Members == 2 }
	pollStatus(ctx, t, c, a, "a in a fleet of two", two)
	pollStatus(ctx, t, c, b, "b in a fleet of two", two)

	slow := goGet(ctx, c, b.proxyURL("/slow/last"))
	recv(ctx, t, up.arrived, "b's request at the app")
	mark := b.stderr.Len()
	b.cancel() // SIGTERM: b drains
	b.stderr.waitFor(ctx, t, mark, "shutting down")
	// Renewals go on while b drains: over several of a's renewals (50 ms
	// each), a still sees two members.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for range 20 {
		if st := status(ctx, t, c, a); st.Fleet.Members != 2 {
			t.Fatalf("b left the fleet with a request in flight: a sees %d members", st.Fleet.Members)
		}
		<-tick.C
	}
	up.unblock()
	if r := recv(ctx, t, slow, "b's last request"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("b's last request: %d %v", r.status, r.err)
	}
	if err := b.wait(ctx, t); err != nil {
		t.Fatalf("b: %v", err)
	}
	pollStatus(ctx, t, c, a, "a alone once b has drained and left", func(st admin.Status) bool { return st.Fleet.Members == 1 })
}
