package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanegate/lanegate/internal/pgbouncertest"
)

// doctorEnv is the benchmark's sizing: a budget of the whole pool of 8.
var doctorEnv = []string{"LANEGATE_DB_POOL_SIZE=8", "LANEGATE_POOL_HEADROOM=0", "LANEGATE_UPSTREAM_CPUS=2"}

// line matches one finding's line of the doctor's report.
func line(sev, check, text string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^  ` + sev + ` +` + check + ` +.*` + regexp.QuoteMeta(text))
}

func TestDoctorWithoutConsole(t *testing.T) {
	stdout, stderr, err := runOnce(t, doctorEnv, "doctor")
	if err != nil {
		t.Fatalf("doctor: got %v, want exit status 0 (warnings only); stdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`^lanegate doctor — configuration from the environment\n`),
		line("WARN", "console", "LANEGATE_PGBOUNCER_URL is not set"),
		line("OK", "budget", "budget 8 (LANEGATE_DB_POOL_SIZE=8 less 0 of headroom) ≤ LANEGATE_DB_POOL_SIZE=8"),
		line("WARN", "query_wait", "not checked: set LANEGATE_PGBOUNCER_URL"),
		line("WARN", "pool_mode", "not checked: set LANEGATE_PGBOUNCER_URL"),
		line("WARN", "max_client_conn", "not checked: set LANEGATE_PGBOUNCER_URL"),
		line("WARN", "threads", "unknown (give --app URL to measure)"),
		regexp.MustCompile(`(?m)^0 FAIL, 5 WARN, 1 OK: exit status 0\n\z`),
	} {
		if !want.MatchString(stdout) {
			t.Errorf("stdout does not match %s:\n%s", want, stdout)
		}
	}
	if stderr != "" {
		t.Errorf("stderr: got %q, want nothing", stderr)
	}
}

func TestDoctorFailsOnBudgetOverPool(t *testing.T) {
	stdout, _, err := runOnce(t, append(doctorEnv, "LANEGATE_BUDGET=12"), "doctor")
	if !errors.Is(err, errReported) {
		t.Fatalf("doctor: got %v, want errReported (exit status 1); stdout:\n%s", err, stdout)
	}
	if want := line("FAIL", "budget", "budget 12 (LANEGATE_BUDGET) > LANEGATE_DB_POOL_SIZE=8"); !want.MatchString(stdout) {
		t.Errorf("stdout does not match %s:\n%s", want, stdout)
	}
	if !strings.HasSuffix(stdout, ": exit status 1\n") {
		t.Errorf("stdout does not end with the exit status 1:\n%s", stdout)
	}
}

func TestDoctorEnvFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "production.env")
	writeFile(t, file, "LANEGATE_DB_POOL_SIZE=8\nLANEGATE_BUDGET=12\n")
	for _, args := range [][]string{
		{"--env-file", file, "doctor"},
		{"doctor", "--env-file", file},
	} {
		stdout, _, err := runOnce(t, nil, args...)
		if !errors.Is(err, errReported) {
			t.Errorf("%q: got %v, want errReported: the file's budget is over its pool", args, err)
		}
		if want := "lanegate doctor — configuration from " + file + "\n"; !strings.HasPrefix(stdout, want) {
			t.Errorf("%q: stdout does not start with %q:\n%s", args, want, stdout)
		}
	}
}

func TestDoctorProbesApp(t *testing.T) {
	// Go's server gives every connection a goroutine, so it always has
	// a thread free: the probe must find one.
	var probed atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/accounts/login/" {
			probed.Add(1)
		}
	}))
	t.Cleanup(app.Close)
	stdout, stderr, err := runOnce(t, doctorEnv, "doctor", "--app", app.URL+"/accounts/login/", "--timeout", "10s")
	if err != nil {
		t.Fatalf("doctor: got %v, want exit status 0; stdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	if want := line("OK", "threads", "answered one more request while 8 were held"); !want.MatchString(stdout) {
		t.Errorf("stdout does not match %s:\n%s", want, stdout)
	}
	if n := probed.Load(); n != 2 {
		t.Errorf("the app answered %d complete requests, want 2: one alone, one past the held ones", n)
	}
}

func TestDoctorConsoleUnreadable(t *testing.T) {
	const password = "pgb-s3cret-pw"
	env := append(doctorEnv, "LANEGATE_PGBOUNCER_URL=postgres://stats:"+password+"@127.0.0.1:1/pgbouncer")
	stdout, stderr, err := runOnce(t, env, "doctor", "--timeout", "2s")
	if !errors.Is(err, errReported) {
		t.Fatalf("doctor: got %v, want errReported (exit status 1); stdout:\n%s", err, stdout)
	}
	if want := line("FAIL", "console", "cannot read"); !want.MatchString(stdout) {
		t.Errorf("stdout does not match %s:\n%s", want, stdout)
	}
	if want := line("WARN", "pool_mode", "not checked: PgBouncer's console did not answer"); !want.MatchString(stdout) {
		t.Errorf("stdout does not match %s:\n%s", want, stdout)
	}
	if strings.Contains(stdout+stderr, password) {
		t.Errorf("the console's password is shown:\n%s%s", stdout, stderr)
	}
}

func TestDoctorRefuses(t *testing.T) {
	tests := []struct {
		name   string
		env    []string
		args   []string
		stderr string
	}{
		{"a stray word", doctorEnv, []string{"doctor", "now"}, "usage: lanegate [--env-file FILE] doctor"},
		{"an unknown flag", doctorEnv, []string{"doctor", "--ap", "http://127.0.0.1:1/"}, "flag provided but not defined: -ap"},
		{"a CONN_MAX_AGE that is no number", doctorEnv, []string{"doctor", "--conn-max-age", "10m"}, `CONN_MAX_AGE "10m"`},
		{"a zero timeout", doctorEnv, []string{"doctor", "--timeout", "0s"}, "--timeout 0s: must be positive"},
		{"an app URL without a host", doctorEnv, []string{"doctor", "--app", "127.0.0.1:8000"}, "--app: want the app server's URL"},
		{"an invalid configuration", []string{"LANEGATE_DB_POOL_SIZE=0"}, []string{"doctor"}, "invalid configuration:\nLANEGATE_DB_POOL_SIZE=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runOnce(t, tt.env, tt.args...)
			if !errors.Is(err, errReported) {
				t.Errorf("%q: got %v, want errReported", tt.args, err)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("%q: stderr %q, want it to say %q", tt.args, stderr, tt.stderr)
			}
			if stdout != "" {
				t.Errorf("%q: stdout %q, want nothing", tt.args, stdout)
			}
		})
	}
	if _, stderr, err := runOnce(t, nil, "doctor", "-h"); err != nil || !strings.Contains(stderr, "-conn-max-age seconds") {
		t.Errorf("doctor -h: got %v and %q, want no error and the flags", err, stderr)
	}
}

// TestDoctorPgBouncer runs the doctor against a real PgBouncer's console:
// its columns and its connect_time as they are, not as the fake says.
func TestDoctorPgBouncer(t *testing.T) {
	t.Run("fits", func(t *testing.T) {
		ctx := testContext(t)
		pb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 4, QueryWaitTimeout: 5 * time.Second})
		hold(ctx, t, pb, 2)
		stdout, stderr, err := runOnce(t, append(poolEnv(pb), "LANEGATE_UPSTREAM_CPUS=2"), "doctor")
		if err != nil {
			t.Fatalf("doctor: got %v, want exit status 0; stdout:\n%s\nstderr:\n%s", err, stdout, stderr)
		}
		for _, want := range []*regexp.Regexp{
			line("OK", "console", "read 1 console (postgres://stats:"),
			line("OK", "budget", "budget 4 (PgBouncer's pool_size 4 less 0 of headroom) ≤ pool_size 4 of test/postgres (now 2 clients active, 0 waiting)"),
			line("OK", "query_wait", "need not be below query_wait_timeout 5s: budget 4 ≤ pool_size 4"),
			line("OK", "pool_mode", "pool_mode session for test/postgres; none of its 2 clients connected over 1m0s ago"),
			line("OK", "max_client_conn", "max_client_conn 100 ≥ budget 4 + 0 other clients connected now"),
		} {
			if !want.MatchString(stdout) {
				t.Errorf("stdout does not match %s:\n%s", want, stdout)
			}
		}
		if strings.Contains(stdout+stderr, pb.Options().StatsPassword) {
			t.Errorf("the console's password is shown:\n%s", stdout)
		}
	})
	t.Run("does not fit", func(t *testing.T) {
		pb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 4, QueryWaitTimeout: 5 * time.Second, PoolMode: "statement", MaxClientConn: 5})
		stdout, stderr, err := runOnce(t, append(poolEnv(pb), "LANEGATE_UPSTREAM_CPUS=2", "LANEGATE_BUDGET=6"), "doctor")
		if !errors.Is(err, errReported) {
			t.Fatalf("doctor: got %v, want errReported (exit status 1); stdout:\n%s\nstderr:\n%s", err, stdout, stderr)
		}
		for _, want := range []*regexp.Regexp{
			line("FAIL", "budget", "budget 6 (LANEGATE_BUDGET) > pool_size 4 of test/postgres"),
			line("WARN", "query_wait", "LANEGATE_CORE_QUEUE_TIMEOUT=5s"),
			line("FAIL", "pool_mode", "pool_mode statement for test/postgres"),
			line("FAIL", "max_client_conn", "max_client_conn 5 < budget 6"),
		} {
			if !want.MatchString(stdout) {
				t.Errorf("stdout does not match %s:\n%s", want, stdout)
			}
		}
	})
}
