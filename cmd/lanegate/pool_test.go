package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/internal/pgbouncertest"
)

// poolEnv watches pb's pool with fast polls, so a test sees the watcher
// act within a fraction of a second.
func poolEnv(pb *pgbouncertest.PgBouncer) []string {
	return []string{
		"LANEGATE_PGBOUNCER_URL=" + pb.StatsURL(),
		"LANEGATE_PGBOUNCER_DATABASE=" + pb.Options().Databases[0],
		"LANEGATE_PGBOUNCER_USER=" + pgbouncertest.AppUser,
		"LANEGATE_PGBOUNCER_POLL=50ms",
		"LANEGATE_PGBOUNCER_STALE=300ms",
		"LANEGATE_PGBOUNCER_TIMEOUT=500ms",
	}
}

// hold opens n clients of the app's pool through PgBouncer, each holding
// a server connection (session pooling keeps it until the client leaves),
// as a background job would.
func hold(ctx context.Context, t *testing.T, pb *pgbouncertest.PgBouncer, n int) (release func()) {
	t.Helper()
	var conns []*pgx.Conn
	release = func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
		conns = nil
	}
	t.Cleanup(release)
	for range n {
		c, err := pgx.Connect(ctx, pb.AppDSN())
		if err != nil {
			t.Fatalf("connecting through PgBouncer: %v", err)
		}
		conns = append(conns, c)
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("query through PgBouncer: %v", err)
		}
	}
	return release
}

func TestConfigSizedFromPgBouncer(t *testing.T) {
	ctx := testContext(t)
	pb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 6, QueryWaitTimeout: 7 * time.Second})
	var stdout, stderr strings.Builder
	a := app{stdout: &stdout, stderr: &stderr, environ: append(environ("http://127.0.0.1:8000"), poolEnv(pb)...)}
	if err := a.run(ctx, []string{"config"}); err != nil {
		t.Fatalf("config: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"LANEGATE_DB_POOL_SIZE=6",
		"# derived from PgBouncer: pool_size of " + pb.Options().Databases[0] + "/" + pgbouncertest.AppUser + " at " + pb.Addr(),
		"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=7s",
		"LANEGATE_BUDGET=6",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config output lacks %q:\n%s", want, out)
		}
	}
	if pw := pb.Options().StatsPassword; pw != "" && strings.Contains(out+stderr.String(), pw) {
		t.Errorf("config printed the console's password")
	}
}

// The whole loop on a real PgBouncer: lanegate sizes itself from the pool,
// gives way while a background job holds most of it, grows back when the
// job leaves, falls back to its static budget while PgBouncer is down, and
// resumes when it is back.
func TestPoolWatcherGivesWayAndSurvivesPgBouncer(t *testing.T) {
	ctx := testContext(t)
	pb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 4, QueryWaitTimeout: 5 * time.Second})
	up := newUpstream(t)
	in := start(ctx, t, append(environ(up.URL), poolEnv(pb)...))
	c := newClient(t)

	st := pollStatus(ctx, t, c, in, "a first reading", func(s admin.Status) bool { return s.Pool != nil && s.Pool.State == "ok" })
	if st.StaticBudget != 4 || st.Budget != 4 || st.Pool.Size != 4 || st.Pool.QueryWaitTimeout != "5s" {
		t.Fatalf("sized from a pool of 4: static %d, budget %d, pool %+v", st.StaticBudget, st.Budget, st.Pool)
	}

	release := hold(ctx, t, pb, 3)
	st = pollStatus(ctx, t, c, in, "the budget giving way", func(s admin.Status) bool { return s.Budget == 1 })
	if st.Pool.Others != 3 || st.Pool.EffectiveBudget != 1 || st.Lanes["core"].Max != 1 {
		t.Fatalf("with 3 of 4 held by others: %+v, core %+v", st.Pool, st.Lanes["core"])
	}
	// lanegate still serves, under the one connection left.
	if r := do(ctx, c, http.MethodGet, in.proxyURL("/page"), ""); r.status != http.StatusOK {
		t.Fatalf("GET through lanegate while others hold the pool: %d %v", r.status, r.err)
	}
	m := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
	for _, want := range []string{"lanegate_effective_budget 1", "lanegate_static_budget 4", "lanegate_pool_others 3", "lanegate_pool_watcher_up 1"} {
		if !strings.Contains(m.body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	release()
	pollStatus(ctx, t, c, in, "the budget growing back", func(s admin.Status) bool { return s.Budget == 4 })

	mark := in.stderr.Len()
	pb.Stop()
	st = pollStatus(ctx, t, c, in, "degraded", func(s admin.Status) bool { return s.Pool.State == "degraded" })
	if st.Budget != 4 || st.Pool.LastError == "" {
		t.Fatalf("console down: budget %d, pool %+v; want the static 4 and the error", st.Budget, st.Pool)
	}
	if r := do(ctx, c, http.MethodGet, in.adminURL("/readyz"), ""); r.status != http.StatusOK || !strings.Contains(r.body, "degraded: PgBouncer's console unreadable") {
		t.Fatalf("/readyz with the console down: %d %q", r.status, r.body)
	}
	in.stderr.waitFor(ctx, t, mark, "cannot read PgBouncer's console")

	pb.Restart()
	pollStatus(ctx, t, c, in, "recovery", func(s admin.Status) bool { return s.Pool.State == "ok" })
	in.stderr.waitFor(ctx, t, mark, "console answers again")
}

// A console that refuses lanegate's password does not stop lanegate: it
// starts on its static configuration, degraded, and says why.
func TestPoolWatcherWrongPassword(t *testing.T) {
	ctx := testContext(t)
	pb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 4})
	up := newUpstream(t)
	env := append(environ(up.URL), poolEnv(pb)...)
	env = append(env, "LANEGATE_PGBOUNCER_URL="+pb.ConsoleURL("not-the-password"), "LANEGATE_DB_POOL_SIZE=3")
	in := start(ctx, t, env)
	c := newClient(t)
	st := pollStatus(ctx, t, c, in, "degraded", func(s admin.Status) bool { return s.Pool != nil && s.Pool.State == "degraded" })
	if st.StaticBudget != 3 || st.Budget != 3 { // DB_POOL_SIZE, with no headroom: the watcher is on
		t.Fatalf("budget %d of %d, want the static 3", st.Budget, st.StaticBudget)
	}
	if strings.Contains(in.stderr.String(), "not-the-password") || strings.Contains(st.Pool.LastError, "not-the-password") {
		t.Fatal("the wrong password was shown")
	}
	if r := do(ctx, c, http.MethodGet, in.proxyURL("/page"), ""); r.status != http.StatusOK {
		t.Fatalf("GET through lanegate with the console refusing: %d %v", r.status, r.err)
	}
}
