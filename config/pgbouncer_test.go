package config

import (
	"strings"
	"testing"
	"time"
)

const consoleURLWithPassword = "postgres://stats:hunter2-secret@127.0.0.1:6432/pgbouncer"

func TestWithPoolSizesFromPgBouncer(t *testing.T) {
	cfg, err := Load(LoadOptions{Environ: []string{"LANEGATE_PGBOUNCER_URL=" + consoleURLWithPassword}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = cfg.WithPool(Pool{Size: 16, QueryWaitTimeout: 120 * time.Second, Name: "app/app at 127.0.0.1:6432"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Admission.DBPoolSize; got != 16 {
		t.Errorf("pool size %d, want PgBouncer's 16", got)
	}
	// No headroom: the watcher gives way to the others as they come.
	if got := cfg.Limits().Budget; got != 16 {
		t.Errorf("budget %d, want the whole pool of 16", got)
	}
	if qw := cfg.Admission.PgBouncerQueryWaitTimeout; qw == nil || *qw != 120*time.Second {
		t.Errorf("query wait timeout %v, want PgBouncer's 120s", qw)
	}
	lines, raw := printLines(t, cfg)
	for _, tc := range []struct{ name, value, comment string }{
		{"LANEGATE_DB_POOL_SIZE", "16", "derived from PgBouncer: pool_size of app/app at 127.0.0.1:6432"},
		{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT", "2m0s", "derived from PgBouncer: query_wait_timeout of app/app at 127.0.0.1:6432"},
		{"LANEGATE_POOL_HEADROOM", "0", "derived: LANEGATE_PGBOUNCER_URL is set, and the budget gives way to what the pool's other clients hold"},
		{"LANEGATE_BUDGET", "16", "derived from LANEGATE_DB_POOL_SIZE=16, LANEGATE_POOL_HEADROOM=0"},
	} {
		if got := lines[tc.name]; got.value != tc.value || got.comment != tc.comment {
			t.Errorf("%s: printed %q # %q, want %q # %q", tc.name, got.value, got.comment, tc.value, tc.comment)
		}
	}
	if strings.Contains(raw, "hunter2") {
		t.Errorf("config printed the console's password:\n%s", raw)
	}
}

// What the operator set wins over PgBouncer; so does a set budget, which
// makes the pool size moot.
func TestWithPoolKeepsWhatWasSet(t *testing.T) {
	for _, tc := range []struct {
		env        []string
		pool, want int
		qw         time.Duration
	}{
		{env: []string{"LANEGATE_DB_POOL_SIZE=10"}, pool: 10, want: 10, qw: 120 * time.Second},
		{env: []string{"LANEGATE_BUDGET=6"}, pool: 20, want: 6, qw: 120 * time.Second},
		{env: []string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=30s", "LANEGATE_POOL_HEADROOM=25"}, pool: 16, want: 12, qw: 30 * time.Second},
		{env: []string{"LANEGATE_PGBOUNCER_FOLLOW=false"}, pool: 16, want: 12, qw: 120 * time.Second},
	} {
		env := append([]string{"LANEGATE_PGBOUNCER_URL=" + consoleURLWithPassword}, tc.env...)
		cfg, err := Load(LoadOptions{Environ: env})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err = cfg.WithPool(Pool{Size: 16, QueryWaitTimeout: 120 * time.Second, Name: "app"})
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Admission.DBPoolSize; got != tc.pool {
			t.Errorf("%v: pool %d, want %d", tc.env, got, tc.pool)
		}
		if got := cfg.Limits().Budget; got != tc.want {
			t.Errorf("%v: budget %d, want %d", tc.env, got, tc.want)
		}
		if qw := cfg.Admission.PgBouncerQueryWaitTimeout; *qw != tc.qw {
			t.Errorf("%v: query wait %s, want %s", tc.env, *qw, tc.qw)
		}
	}
}

func TestWithPoolWithoutConsoleChangesNothing(t *testing.T) {
	cfg, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cfg.WithPool(Pool{Size: 3, Name: "app"})
	if err != nil || got.Admission.DBPoolSize != 20 || got.Limits().Budget != 16 {
		t.Fatalf("without a console: pool %d, budget %d, %v; want the defaults 20 and 16", got.Admission.DBPoolSize, got.Limits().Budget, err)
	}
}

func TestWithPoolOfNothingIsAnError(t *testing.T) {
	cfg, err := Load(LoadOptions{Environ: []string{"LANEGATE_PGBOUNCER_URL=" + consoleURLWithPassword}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cfg.WithPool(Pool{Size: 0, Name: "app/app at 127.0.0.1:6432"})
	if err == nil || !strings.Contains(err.Error(), "PgBouncer's pool app/app at 127.0.0.1:6432 (pool_size 0)") ||
		!strings.Contains(err.Error(), "LANEGATE_DB_POOL_SIZE=0") {
		t.Fatalf("pool of 0: got %v", err)
	}
	// The configuration comes back as it was, not emptied.
	if got.Server.Listen != ":8080" || got.Admission.DBPoolSize != 20 || got.Limits().Budget != cfg.Limits().Budget {
		t.Fatalf("after a refused sizing: listen %q, pool %d, budget %d; want the configuration unchanged",
			got.Server.Listen, got.Admission.DBPoolSize, got.Limits().Budget)
	}
	// A lane value set above what the pool allows is refused the same way.
	cfg, err = Load(LoadOptions{Environ: []string{"LANEGATE_PGBOUNCER_URL=" + consoleURLWithPassword, "LANEGATE_LOGIN_MAX=4"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cfg.WithPool(Pool{Size: 2, Name: "app"}); err == nil || got.Admission.DBPoolSize != 20 {
		t.Fatalf("pool of 2 under LANEGATE_LOGIN_MAX=4: got %v, pool %d", err, got.Admission.DBPoolSize)
	}
}

func TestPgBouncerVariablesValidated(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"LANEGATE_PGBOUNCER_URL=mysql://stats:hunter2-secret@db/pgbouncer"}, "LANEGATE_PGBOUNCER_URL: URL 1 (mysql://db): scheme must be postgres or postgresql"},
		{[]string{"LANEGATE_PGBOUNCER_URL=postgres://a@h/pgbouncer,postgres://stats:hunter2-secret@h:6432/app"}, "URL 2 (postgres://h:6432): database must be pgbouncer"},
		{[]string{"LANEGATE_PGBOUNCER_URL=postgres:///pgbouncer"}, "has no host"},
		{[]string{"LANEGATE_PGBOUNCER_URL=hunter2-secret"}, "LANEGATE_PGBOUNCER_URL: URL 1: scheme must be postgres or postgresql"},
		{[]string{"LANEGATE_PGBOUNCER_URL=postgres://u:1234/x@h/pgbouncer"}, "LANEGATE_PGBOUNCER_URL: URL 1: database must be pgbouncer"},
		{[]string{"LANEGATE_PGBOUNCER_URL=postgres://h/app?password=hunter2-secret"}, "URL 1 (postgres://h): database must be pgbouncer"},
		{[]string{"LANEGATE_PGBOUNCER_URL=postgres://h:99999/pgbouncer"}, `port "99999" is not a port number`},
		{[]string{"LANEGATE_PGBOUNCER_POLL=0s"}, "LANEGATE_PGBOUNCER_POLL=0s: must be positive"},
		{[]string{"LANEGATE_PGBOUNCER_POLL=-1s"}, "LANEGATE_PGBOUNCER_POLL=-1s: must be positive"},
		{[]string{"LANEGATE_PGBOUNCER_TIMEOUT=0s"}, "LANEGATE_PGBOUNCER_TIMEOUT=0s: must be positive"},
		{[]string{"LANEGATE_PGBOUNCER_STALE=100ms"}, "LANEGATE_PGBOUNCER_STALE=100ms is shorter than LANEGATE_PGBOUNCER_POLL=250ms"},
	} {
		_, err := Load(LoadOptions{Environ: tc.env})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.env, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%v: the error shows the password: %v", tc.env, err)
		}
	}
}
