package pgbouncertest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// query runs SELECT 1 through a fresh connection to dsn within timeout.
func query(dsn string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cfg, err := consoleConfig(dsn)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if strings.HasSuffix(cfg.Database, "pgbouncer") {
		_, err = conn.Exec(ctx, "SHOW VERSION")
	} else {
		_, err = conn.Exec(ctx, "SELECT 1")
	}
	return err
}

func TestPgBouncer(t *testing.T) {
	p := Start(t, Options{PoolSize: 3, QueryWaitTimeout: 1500 * time.Millisecond})
	if err := query(p.AppDSN(), 5*time.Second); err != nil {
		t.Fatalf("the app's database through PgBouncer: %v", err)
	}
	if err := query(p.StatsURL(), 5*time.Second); err != nil {
		t.Fatalf("the console as %s: %v", StatsUser, err)
	}
	if err := query(p.ConsoleURL("wrong"), 5*time.Second); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("the console with a wrong password: got %v, want it refused", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.Admin(ctx, "SET default_pool_size = 4")

	addr := p.Addr()
	p.Stop()
	if err := query(p.StatsURL(), 2*time.Second); err == nil {
		t.Error("stopped: the console still answers")
	}
	p.Restart()
	if p.Addr() != addr {
		t.Errorf("restarted on %s, want the same address %s", p.Addr(), addr)
	}
	if err := query(p.StatsURL(), 5*time.Second); err != nil {
		t.Errorf("restarted: %v", err)
	}

	p.Pause()
	if err := query(p.StatsURL(), 200*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("paused: got %v, want no answer within the deadline", err)
	}
	p.Resume()
	if err := query(p.StatsURL(), 5*time.Second); err != nil {
		t.Errorf("resumed: %v", err)
	}
}

func TestConfig(t *testing.T) {
	p := &PgBouncer{opts: Options{Databases: []string{"app", "reports"}, QueryWaitTimeout: 1500 * time.Millisecond}.withDefaults(), port: 7000}
	ini := p.config("/x/userlist.txt")
	for _, want := range []string{
		"app = host=127.0.0.1 port=5432 dbname=app\n",
		"reports = host=127.0.0.1 port=5432 dbname=reports\n",
		"listen_port = 7000\n",
		"auth_type = md5\n",
		"default_pool_size = 2\n",
		"pool_mode = session\n",
		"query_wait_timeout = 1.5\n",
		"stats_users = stats\n",
	} {
		if !strings.Contains(ini, want) {
			t.Errorf("pgbouncer.ini lacks %q:\n%s", want, ini)
		}
	}
	if strings.Contains(ini, "ignore_startup_parameters") {
		t.Errorf("pgbouncer.ini ignores startup parameters, which would hide a client sending them:\n%s", ini)
	}
	if got, want := p.userlist(), "\"stats\" \"stats-secret\"\n\"admin\" \"admin-secret\"\n\"postgres\" \"app-secret\"\n"; got != want {
		t.Errorf("userlist:\n%s\nwant:\n%s", got, want)
	}
}
