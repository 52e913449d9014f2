package doctor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/poolwatch"
)

// fakeConsole is a scripted PgBouncer console.
type fakeConsole struct {
	reading poolwatch.Reading
	readErr error
	// shows are the rows of SHOW <what>, per console; a what missing
	// here fails, so a check that asks for more than it should shows.
	shows   map[string][][]map[string]string
	showErr error
	asked   []string
}

func (f *fakeConsole) Read(context.Context) (poolwatch.Reading, error) {
	f.asked = append(f.asked, "READ")
	return f.reading, f.readErr
}

func (f *fakeConsole) Show(_ context.Context, what string) ([][]map[string]string, error) {
	f.asked = append(f.asked, what)
	if f.showErr != nil {
		return nil, f.showErr
	}
	rows, ok := f.shows[what]
	if !ok {
		return nil, fmt.Errorf("fake console: SHOW %s not scripted", what)
	}
	return rows, nil
}

// stormReading is the benchmark's PgBouncer: a session pool of 8 for
// lanegate_storm/storm, query_wait_timeout 5 s, max_client_conn 1000.
func stormReading() poolwatch.Reading {
	return poolwatch.Reading{
		Pool: poolwatch.Pool{Database: "lanegate_storm", User: "storm", Size: 8, Mode: "session"},
		Settings: poolwatch.Settings{
			QueryWaitTimeout: 5 * time.Second, PoolMode: "session",
			MaxClientConn: 1000, DefaultPoolSize: 8,
		},
		Consoles: 1,
	}
}

// stormConsole answers as the benchmark's PgBouncer does when idle.
func stormConsole() *fakeConsole {
	return &fakeConsole{
		reading: stormReading(),
		shows: map[string][][]map[string]string{
			"POOLS":   {{pools("pgbouncer", "pgbouncer", 1, 0), pools("lanegate_storm", "storm", 0, 0)}},
			"CLIENTS": {{client("pgbouncer", "storm", "2026-12-03 04:00:00 UTC")}},
		},
	}
}

func pools(db, user string, active, waiting int) map[string]string {
	return map[string]string{
		"database": db, "user": user,
		"cl_active": fmt.Sprint(active), "cl_waiting": fmt.Sprint(waiting),
		"cl_active_cancel_req": "0", "cl_waiting_cancel_req": "0",
		"sv_active": "0", "sv_idle": "0", "maxwait": "0", "pool_mode": "session",
	}
}

func client(db, user, connected string) map[string]string {
	return map[string]string{
		"type": "C", "user": user, "database": db, "state": "active",
		"addr": "127.0.0.1", "port": "40000", "connect_time": connected,
		"request_time": connected, "wait": "0", "wait_us": "0",
	}
}

// stormEnv is bench/storm/lanegate.env's sizing: a budget of the whole
// pool of 8.
var stormEnv = []string{"LANEGATE_DB_POOL_SIZE=8", "LANEGATE_POOL_HEADROOM=0", "LANEGATE_UPSTREAM_CPUS=2"}

// consoleURL is the benchmark's PgBouncer console, as a configuration
// that reads it names it.
const consoleURL = "postgres://storm@127.0.0.1:6432/pgbouncer"

// watched adds LANEGATE_PGBOUNCER_URL to env, as every configuration
// that has a console does.
func watched(env ...string) []string {
	return append(slices.Clone(env), "LANEGATE_PGBOUNCER_URL="+consoleURL)
}

func load(t *testing.T, env ...string) config.Config {
	t.Helper()
	cfg, err := config.Load(config.LoadOptions{Environ: env})
	if err != nil {
		t.Fatalf("config.Load(%q): %v", env, err)
	}
	return cfg
}

// only returns the findings of one check, failing the test when there
// are none.
func only(t *testing.T, r Report, check string) []Finding {
	t.Helper()
	var out []Finding
	for _, f := range r.Findings {
		if f.Check == check {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no %s finding in %+v", check, r.Findings)
	}
	return out
}

// want checks one finding's severity and that its text and fix hold the
// given fragments.
func want(t *testing.T, f Finding, sev Severity, found, fix []string) {
	t.Helper()
	if f.Severity != sev {
		t.Errorf("%s: got %s, want %s: %s → %s", f.Check, f.Severity, sev, f.Found, f.Fix)
	}
	for _, s := range found {
		if !strings.Contains(f.Found, s) {
			t.Errorf("%s: found %q, want it to say %q", f.Check, f.Found, s)
		}
	}
	for _, s := range fix {
		if !strings.Contains(f.Fix, s) {
			t.Errorf("%s: fix %q, want it to say %q", f.Check, f.Fix, s)
		}
	}
	if len(fix) == 0 && f.Fix != "" && sev == OK {
		t.Errorf("%s: OK with a fix %q", f.Check, f.Fix)
	}
}

func run1(t *testing.T, opts Options) Report {
	t.Helper()
	return Run(t.Context(), opts)
}

func TestBudget(t *testing.T) {
	tests := []struct {
		name       string
		env        []string
		console    bool
		size       int
		sev        Severity
		found, fix []string
	}{
		{"within the pool", watched(stormEnv...), true, 8, OK,
			[]string{"budget 8 (LANEGATE_DB_POOL_SIZE=8 less 0 of headroom) ≤ pool_size 8 of lanegate_storm/storm"}, nil},
		{"sized from PgBouncer", watched(), true, 8, OK,
			[]string{"budget 8 (PgBouncer's pool_size 8 less 0 of headroom) ≤ pool_size 8"}, nil},
		{"sized from PgBouncer, with a headroom", watched("LANEGATE_POOL_HEADROOM=25"), true, 8, OK,
			[]string{"budget 6 (PgBouncer's pool_size 8 less 2 of headroom) ≤ pool_size 8"}, nil},
		{"derived from a pool larger than PgBouncer's", watched("LANEGATE_DB_POOL_SIZE=20"), true, 8, Fail,
			[]string{"budget 20 (LANEGATE_DB_POOL_SIZE=20 less 0 of headroom) > pool_size 8", "wait in PgBouncer"},
			[]string{"unset LANEGATE_DB_POOL_SIZE, to read it from PgBouncer, or set it to 8"}},
		{"set above the pool", watched(append(slices.Clone(stormEnv), "LANEGATE_BUDGET=12")...), true, 8, Fail,
			[]string{"budget 12 (LANEGATE_BUDGET) > pool_size 8"}, []string{"lower LANEGATE_BUDGET to at most 8", "at least 12"}},
		{"derived from a pool smaller than PgBouncer's", watched(stormEnv...), true, 10, Warn,
			[]string{"budget 8", "≤ pool_size 10", "the pool is 10, not 8", "would be 10"}, []string{"or set it to 10"}},
		{"set within a pool LANEGATE_DB_POOL_SIZE misstates", watched("LANEGATE_BUDGET=6"), true, 8, OK,
			[]string{"budget 6 (LANEGATE_BUDGET) ≤ pool_size 8"}, nil},
		{"no pool", watched(), true, 0, Fail,
			[]string{"no server connections"}, []string{"LANEGATE_PGBOUNCER_DATABASE"}},
		{"without a console, within LANEGATE_DB_POOL_SIZE", nil, false, 0, OK,
			[]string{"budget 16 (LANEGATE_DB_POOL_SIZE=20 less 4 of headroom) ≤ LANEGATE_DB_POOL_SIZE=20", "not read"}, nil},
		{"without a console, set above LANEGATE_DB_POOL_SIZE", append(slices.Clone(stormEnv), "LANEGATE_BUDGET=12"), false, 0, Fail,
			[]string{"budget 12 (LANEGATE_BUDGET) > LANEGATE_DB_POOL_SIZE=8"}, []string{"lower LANEGATE_BUDGET to at most 8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{Config: load(t, tt.env...)}
			if tt.console {
				c := stormConsole()
				c.reading.Pool.Size = tt.size
				opts.Console = c
			}
			fs := only(t, run1(t, opts), checkBudget)
			if len(fs) != 1 {
				t.Fatalf("got %d budget findings, want 1: %+v", len(fs), fs)
			}
			want(t, fs[0], tt.sev, tt.found, tt.fix)
		})
	}
}

func TestQueryWait(t *testing.T) {
	over := watched(append(slices.Clone(stormEnv), "LANEGATE_BUDGET=12")...)
	tests := []struct {
		name       string
		env        []string
		qw         time.Duration
		sevs       []Severity
		found, fix []string
	}{
		{"budget within the pool", watched(stormEnv...), 5 * time.Second, []Severity{OK},
			[]string{"need not be below query_wait_timeout 5s", "budget 8 ≤ pool_size 8"}, nil},
		{"budget over the pool, lanes not below", over, 5 * time.Second, []Severity{Warn},
			[]string{"LANEGATE_LOGIN_MAX_HOLD=30s", "LANEGATE_CORE_QUEUE_TIMEOUT=5s", "LANEGATE_EXPORT_QUEUE_TIMEOUT=30s", "not below query_wait_timeout 5s", "budget 12 > pool_size 8"},
			[]string{"below 5s"}},
		{"budget over the pool, lanes below", over, 120 * time.Second, []Severity{OK},
			[]string{"every lane's queue timeout is below query_wait_timeout 120s"}, nil},
		{"disabled", watched(stormEnv...), 0, []Severity{Warn},
			[]string{"query_wait_timeout is 0 (disabled)", "for ever"}, []string{"set query_wait_timeout in pgbouncer.ini"}},
		{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT misstates it", watched(append(slices.Clone(stormEnv), "LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=120s")...), 5 * time.Second, []Severity{Warn, OK},
			[]string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=2m0s, but PgBouncer's query_wait_timeout is 5s"}, []string{"unset LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT, to read it from PgBouncer, or set it to 5s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stormConsole()
			c.reading.Settings.QueryWaitTimeout = tt.qw
			fs := only(t, run1(t, Options{Config: load(t, tt.env...), Console: c}), checkQueryWait)
			var got []Severity
			for _, f := range fs {
				got = append(got, f.Severity)
			}
			if !slices.Equal(got, tt.sevs) {
				t.Fatalf("got severities %v, want %v: %+v", got, tt.sevs, fs)
			}
			want(t, fs[0], tt.sevs[0], tt.found, tt.fix)
		})
	}
}

func TestPoolMode(t *testing.T) {
	const now = "2026-12-03 04:00:00 UTC"
	persistent := [][]map[string]string{{
		client("pgbouncer", "stats", now),
		client("lanegate_storm", "storm", "2026-12-03 03:58:30 UTC"), // 90 s
		client("lanegate_storm", "storm", "2026-12-03 02:00:00 UTC"), // 2 h
		client("lanegate_storm", "storm", "2026-12-03 03:59:58 UTC"),
		client("lanegate_storm", "celery", "2026-12-01 00:00:00 UTC"), // another user
		client("other", "storm", "2026-12-01 00:00:00 UTC"),           // another database
	}}
	fresh := [][]map[string]string{{
		client("lanegate_storm", "storm", "2026-12-03 03:59:58 CET"),
		client("lanegate_storm", "storm", "2026-12-03 03:59:30 CET"),
		client("pgbouncer", "stats", "2026-12-03 04:00:00 CET"),
	}}
	tests := []struct {
		name       string
		mode       string // the pool's own; "" leaves PgBouncer's default
		defMode    string
		cma        string // --conn-max-age; "" is unstated
		clients    [][]map[string]string
		showErr    error
		sev        Severity
		found, fix []string
	}{
		{"statement", "statement", "session", "", nil, nil, Fail,
			[]string{"pool_mode statement for lanegate_storm/storm"}, []string{"pool_mode = transaction"}},
		{"statement by default", "", "statement", "0", nil, nil, Fail,
			[]string{"pool_mode statement"}, nil},
		{"the pool's own mode wins", "session", "statement", "0", nil, nil, OK,
			[]string{"pool_mode session"}, nil},
		{"transaction", "transaction", "session", "", nil, nil, Warn,
			[]string{"pool_mode transaction", "server-side cursors"}, []string{"DISABLE_SERVER_SIDE_CURSORS = True"}},
		{"session, stated persistent", "session", "session", "600", nil, nil, Fail,
			[]string{"CONN_MAX_AGE = 600 (as stated)"}, []string{"CONN_MAX_AGE = 0", "pool_mode = transaction"}},
		{"session, stated None", "session", "session", "None", nil, nil, Fail,
			[]string{"CONN_MAX_AGE = None (as stated)"}, nil},
		{"session, stated 0 beats what is seen", "session", "session", "0", persistent, nil, OK,
			[]string{"CONN_MAX_AGE = 0 (as stated)"}, nil},
		{"session, persistent clients seen", "session", "session", "", persistent, nil, Warn,
			[]string{"2 of its 3 clients connected over 1m0s ago (the oldest 2h0m0s)"}, []string{"CONN_MAX_AGE = 0", "LANEGATE_POOL_HEADROOM", "--conn-max-age"}},
		{"session, only fresh clients", "session", "session", "", fresh, nil, OK,
			[]string{"none of its 2 clients connected over 1m0s ago"}, nil},
		{"session, no clients", "session", "session", "", [][]map[string]string{{client("pgbouncer", "stats", now)}}, nil, Warn,
			[]string{"no client of it is connected now"}, []string{"--conn-max-age"}},
		{"session, SHOW CLIENTS fails", "session", "session", "", nil, errors.New("poolwatch: SHOW CLIENTS: broken pipe"), Warn,
			[]string{"unknown", "broken pipe"}, []string{"--conn-max-age"}},
		{"session, unreadable connect_time", "session", "session", "", [][]map[string]string{{client("lanegate_storm", "storm", "yesterday")}}, nil, Warn,
			[]string{`connect_time "yesterday"`}, nil},
		{"unknown mode", "odd", "session", "", nil, nil, Warn,
			[]string{`pool_mode "odd"`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stormConsole()
			c.reading.Pool.Mode = tt.mode
			c.reading.Settings.PoolMode = tt.defMode
			c.shows["CLIENTS"] = tt.clients
			c.showErr = tt.showErr
			opts := Options{Config: load(t, watched(stormEnv...)...), Console: c}
			if tt.cma != "" {
				cma, err := ParseConnMaxAge(tt.cma)
				if err != nil {
					t.Fatal(err)
				}
				opts.ConnMaxAge = cma
			}
			fs := only(t, run1(t, opts), checkPoolMode)
			if len(fs) != 1 {
				t.Fatalf("got %d pool_mode findings, want 1: %+v", len(fs), fs)
			}
			want(t, fs[0], tt.sev, tt.found, tt.fix)
			if tt.cma != "" && slices.Contains(c.asked, "CLIENTS") {
				t.Errorf("asked SHOW CLIENTS though CONN_MAX_AGE was stated")
			}
		})
	}
}

func TestMaxClientConn(t *testing.T) {
	tests := []struct {
		name       string
		max        int
		consoles   int
		pools      [][]map[string]string
		showErr    error
		sev        Severity
		found, fix []string
	}{
		{"below the budget", 4, 1, nil, nil, Fail,
			[]string{"max_client_conn 4 < budget 8", "no more connections allowed"}, []string{"at least 8"}},
		{"room for the budget and the others", 1000, 1, [][]map[string]string{{pools("lanegate_storm", "storm", 3, 0), pools("jobs", "celery", 5, 1)}}, nil, OK,
			[]string{"max_client_conn 1000 ≥ budget 8 + 6 other clients connected now"}, nil},
		{"no room for the others", 10, 1, [][]map[string]string{{pools("lanegate_storm", "storm", 3, 0), pools("jobs", "celery", 5, 1)}}, nil, Warn,
			[]string{"max_client_conn 10 < budget 8 + 6 other clients"}, []string{"at least 14"}},
		{"the app's clients past the budget are others", 1000, 1, [][]map[string]string{{pools("lanegate_storm", "storm", 11, 1)}}, nil, OK,
			[]string{"budget 8 + 4 other clients"}, nil},
		{"the console's clients do not count", 1000, 1, [][]map[string]string{{pools("pgbouncer", "pgbouncer", 3, 0)}}, nil, OK,
			[]string{"budget 8 + 0 other clients"}, nil},
		{"summed over consoles", 5, 2, [][]map[string]string{{pools("jobs", "celery", 1, 0)}, {pools("jobs", "celery", 2, 0)}}, nil, Warn,
			[]string{"max_client_conn 5 × 2 PgBouncers < budget 8 + 3 other clients"}, []string{"at least 6"}},
		{"SHOW POOLS fails", 1000, 1, nil, errors.New("poolwatch: SHOW POOLS: timeout"), Warn,
			[]string{"max_client_conn 1000 ≥ budget 8", "unknown", "timeout"}, nil},
		{"SHOW POOLS garbled", 1000, 1, [][]map[string]string{{{"database": "jobs", "cl_active": "many"}}}, nil, Warn,
			[]string{`cl_active: "many" is not a number`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stormConsole()
			c.reading.Settings.MaxClientConn = tt.max
			c.reading.Consoles = tt.consoles
			c.reading.Pool.Size = 8 * tt.consoles
			c.shows["POOLS"] = tt.pools
			c.shows["CLIENTS"] = nil
			c.showErr = tt.showErr
			fs := only(t, run1(t, Options{Config: load(t, watched(stormEnv...)...), Console: c, ConnMaxAge: ConnMaxAge{Stated: true}}), checkMaxClientConn)
			if len(fs) != 1 {
				t.Fatalf("got %d findings, want 1: %+v", len(fs), fs)
			}
			want(t, fs[0], tt.sev, tt.found, tt.fix)
		})
	}
}

// consoleChecks are the checks that need PgBouncer's console.
var consoleChecks = []string{checkQueryWait, checkPoolMode, checkMaxClientConn}

func TestWithoutConsole(t *testing.T) {
	r := run1(t, Options{Config: load(t, stormEnv...)})
	want(t, only(t, r, checkConsole)[0], Warn, []string{"LANEGATE_PGBOUNCER_URL is not set"}, []string{"set LANEGATE_PGBOUNCER_URL"})
	for _, check := range consoleChecks {
		want(t, only(t, r, check)[0], Warn, []string{"not checked: set LANEGATE_PGBOUNCER_URL"}, nil)
	}
	want(t, only(t, r, checkBudget)[0], OK, []string{"≤ LANEGATE_DB_POOL_SIZE=8"}, nil)
	want(t, only(t, r, checkThreads)[0], Warn, []string{"unknown (give --app URL to measure)", "at least 9 worker threads"}, nil)
	if r.Failed() {
		t.Errorf("Failed() = true with warnings only, want false (exit status 0): %+v", r.Findings)
	}
}

func TestConsoleUnreachable(t *testing.T) {
	const password = "pa55-w0rd"
	raw := "postgres://stats:" + password + "@127.0.0.1:6432/pgbouncer?sslmode=disable"
	cfg := load(t, append(slices.Clone(stormEnv), "LANEGATE_PGBOUNCER_URL="+raw)...)
	c := &fakeConsole{readErr: fmt.Errorf("poolwatch: connecting to %s: password %s refused: connection refused", raw, password)}
	r := run1(t, Options{
		Config:   cfg,
		Console:  c,
		Consoles: []string{"postgres://stats:xxxxx@127.0.0.1:6432/pgbouncer?sslmode=disable"},
	})
	want(t, only(t, r, checkConsole)[0], Fail,
		[]string{"cannot read postgres://stats:xxxxx@127.0.0.1:6432/pgbouncer?sslmode=disable", "connection refused"}, []string{"LANEGATE_PGBOUNCER_URL"})
	for _, check := range consoleChecks {
		want(t, only(t, r, check)[0], Warn, []string{"not checked: PgBouncer's console did not answer"}, nil)
	}
	want(t, only(t, r, checkBudget)[0], OK, []string{"≤ LANEGATE_DB_POOL_SIZE=8"}, nil)
	if !r.Failed() {
		t.Error("Failed() = false with the console unreachable, want true (exit status 1)")
	}
	var out strings.Builder
	if err := r.Write(&out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), password) {
		t.Errorf("the report shows the console's password:\n%s", out.String())
	}
}

func TestScrubWithoutNames(t *testing.T) {
	raw := "postgres://stats@127.0.0.1:6432/pgbouncer?password=hunter2%2B"
	d := &run{opts: Options{Config: load(t, "LANEGATE_PGBOUNCER_URL="+raw)}}
	got := d.scrub(fmt.Errorf("dial %s: password hunter2+ (escaped hunter2%%2B) refused", raw))
	for _, secret := range []string{"hunter2"} {
		if strings.Contains(got, secret) {
			t.Errorf("scrub left %q in %q", secret, got)
		}
	}
	if !strings.Contains(got, "console 1") {
		t.Errorf("scrub(%q): want the URL named console 1", got)
	}
}

func TestConsoleRead(t *testing.T) {
	r := run1(t, Options{Config: load(t, watched(stormEnv...)...), Console: stormConsole(), Consoles: []string{consoleURL}})
	want(t, only(t, r, checkConsole)[0], OK, []string{
		"read 1 console (postgres://storm@127.0.0.1:6432/pgbouncer)", "pool lanegate_storm/storm", "pool_mode session",
		"query_wait_timeout 5s", "max_client_conn 1000",
	}, nil)
}

func TestConfigWarningsRepeated(t *testing.T) {
	cfg := load(t, append(slices.Clone(stormEnv), "LANEGATE_BUDGET=12", "LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=5s")...)
	if len(cfg.Warnings()) == 0 {
		t.Fatal("config.Load gave no warning for lane timeouts over query_wait_timeout; the test needs one")
	}
	fs := only(t, run1(t, Options{Config: cfg}), checkConfig)
	if len(fs) != len(cfg.Warnings()) {
		t.Fatalf("got %d config findings, want %d", len(fs), len(cfg.Warnings()))
	}
	for i, f := range fs {
		want(t, f, Warn, []string{cfg.Warnings()[i]}, nil)
	}
}

// TestExitStatus pins the rule lanegate doctor's exit status follows:
// 1 with any FAIL, else 0, warnings or not.
func TestExitStatus(t *testing.T) {
	tests := []struct {
		sevs   []Severity
		failed bool
	}{
		{nil, false},
		{[]Severity{OK, OK}, false},
		{[]Severity{OK, Warn, Warn}, false},
		{[]Severity{OK, Fail}, true},
		{[]Severity{Warn, Fail, OK}, true},
	}
	for _, tt := range tests {
		var r Report
		for _, s := range tt.sevs {
			r.Findings = append(r.Findings, Finding{Severity: s, Check: "x"})
		}
		if got := r.Failed(); got != tt.failed {
			t.Errorf("Failed() of %v = %v, want %v", tt.sevs, got, tt.failed)
		}
	}
	// End to end: the benchmark's stack, sized as its env file sizes it,
	// passes; with a budget over its pool it fails.
	ok := run1(t, Options{Config: load(t, watched()...), Console: stormConsole(), ConnMaxAge: ConnMaxAge{Stated: true}})
	if ok.Failed() {
		t.Errorf("the benchmark's stack: Failed() = true, want false: %+v", ok.Findings)
	}
	bad := run1(t, Options{Config: load(t, watched("LANEGATE_BUDGET=12")...), Console: stormConsole(), ConnMaxAge: ConnMaxAge{Stated: true}})
	if !bad.Failed() {
		t.Errorf("budget over the pool: Failed() = false, want true: %+v", bad.Findings)
	}
}

func TestWrite(t *testing.T) {
	r := Report{Findings: []Finding{
		{OK, "budget", "8 requests in flight ≤ pool_size 8", ""},
		{Fail, "max_client_conn", "max_client_conn 4 < budget 8", "raise max_client_conn to at least 8"},
		{Warn, "threads", "unknown", ""},
	}}
	var out strings.Builder
	if err := r.Write(&out); err != nil {
		t.Fatal(err)
	}
	const golden = `  OK    budget           8 requests in flight ≤ pool_size 8
  FAIL  max_client_conn  max_client_conn 4 < budget 8
                         → raise max_client_conn to at least 8
  WARN  threads          unknown
1 FAIL, 1 WARN, 1 OK: exit status 1
`
	if out.String() != golden {
		t.Errorf("Write:\n%s\nwant:\n%s", out.String(), golden)
	}
}

func TestWriteError(t *testing.T) {
	r := Report{Findings: []Finding{{OK, "budget", "fine", ""}}}
	if err := r.Write(failingWriter{}); err == nil {
		t.Error("Write to a failing writer: got no error")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestParseConnMaxAge(t *testing.T) {
	tests := []struct {
		in         string
		want       ConnMaxAge
		persistent bool
		err        bool
	}{
		{"0", ConnMaxAge{Stated: true}, false, false},
		{"600", ConnMaxAge{Stated: true, Seconds: 600}, true, false},
		{"None", ConnMaxAge{Stated: true, Unlimited: true}, true, false},
		{"none", ConnMaxAge{Stated: true, Unlimited: true}, true, false},
		{"-1", ConnMaxAge{}, false, true},
		{"10m", ConnMaxAge{}, false, true},
		{"", ConnMaxAge{}, false, true},
	}
	for _, tt := range tests {
		got, err := ParseConnMaxAge(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("ParseConnMaxAge(%q): error %v, want error %v", tt.in, err, tt.err)
		}
		if got != tt.want || got.Persistent() != tt.persistent {
			t.Errorf("ParseConnMaxAge(%q) = %+v (persistent %v), want %+v (persistent %v)", tt.in, got, got.Persistent(), tt.want, tt.persistent)
		}
	}
}

// TestLaneTimeoutVars keeps the variables the doctor names in step with
// config's.
func TestLaneTimeoutVars(t *testing.T) {
	var names []string
	for _, v := range config.Variables() {
		names = append(names, v.Name)
	}
	for _, l := range admission.Lanes() {
		if name := laneTimeoutVar(l); !slices.Contains(names, name) {
			t.Errorf("lane %s: %s is not a variable of config", l, name)
		}
	}
}

// TestSizedFromPoolInvalid: a configuration valid as written but not once
// sized from PgBouncer's pool would not start; that fails, and the other
// checks go on with the configuration as written.
func TestSizedFromPoolInvalid(t *testing.T) {
	r := run1(t, Options{Config: load(t, watched("LANEGATE_CORE_MAX=12")...), Console: stormConsole()})
	want(t, only(t, r, checkConfig)[0], Fail, []string{"sizing from PgBouncer's pool lanegate_storm/storm (pool_size 8)", "LANEGATE_CORE_MAX=12"}, []string{"variables named"})
	want(t, only(t, r, checkBudget)[0], Fail, []string{"budget 20 (LANEGATE_DB_POOL_SIZE=20 less 0 of headroom) > pool_size 8"}, nil)
}
