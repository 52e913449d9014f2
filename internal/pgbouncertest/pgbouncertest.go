// Package pgbouncertest runs private PgBouncer processes for tests, in
// front of the machine's PostgreSQL, so that tests of the pool watcher read
// a real admin console (its columns, its types, its refusals) rather than
// what someone believed it says, and can stop, restart and freeze their own.
//
// It runs Debian's /usr/sbin/pgbouncer against PostgreSQL on 127.0.0.1:5432
// with trust authentication for the postgres user. Tests that use it skip
// when either is missing, unless the environment sets
// TEST_REQUIRE_PGBOUNCER=1 (as CI does), where a missing one fails them
// instead of silently testing nothing.
package pgbouncertest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lanegate/lanegate/internal/nettest"
)

// RequireEnv names the environment variable that turns a missing PgBouncer
// or PostgreSQL from a skip into a failure.
const RequireEnv = "TEST_REQUIRE_PGBOUNCER"

// Binary is Debian's PgBouncer, the one lanegate is deployed next to.
const Binary = "/usr/sbin/pgbouncer"

// PostgresAddr is where the machine's PostgreSQL listens; it must trust
// the postgres user on loopback.
const PostgresAddr = "127.0.0.1:5432"

// The console's and the app's logins, listed in the userlist.
const (
	// StatsUser is in stats_users: it may read every SHOW, as lanegate's
	// login is meant to, and change nothing.
	StatsUser = "stats"
	// AdminUser is in admin_users: tests use it to change PgBouncer's
	// settings while it runs (SET, RELOAD).
	AdminUser = "admin"
	// AppUser is the app's login, through PgBouncer to PostgreSQL.
	AppUser = "postgres"
)

// readyTimeout bounds how long a starting PgBouncer may take to answer on
// its console. It starts in milliseconds; the margin is for loaded CI
// machines.
const readyTimeout = 10 * time.Second

// startAttempts is how often Start retries on a fresh port when PgBouncer
// exits at once, which happens when another process took the free port
// between our probe and PgBouncer's bind.
const startAttempts = 3

// Options configure one PgBouncer. The zero value is a session-mode pool
// of 2 for database "test".
type Options struct {
	// Databases are the databases PgBouncer serves, each the PostgreSQL
	// database of the same name, with no forced user: every client
	// login has its own pool. Empty: "test". The first is the app's.
	Databases []string
	// PoolSize is default_pool_size. Zero: 2.
	PoolSize int
	// ReservePoolSize is reserve_pool_size. Zero: none.
	ReservePoolSize int
	// QueryWaitTimeout is query_wait_timeout, in whole or fractional
	// seconds as PgBouncer 1.18 takes it. Zero: PgBouncer's default,
	// 120 s.
	QueryWaitTimeout time.Duration
	// PoolMode is pool_mode. Empty: session.
	PoolMode string
	// MaxClientConn is max_client_conn. Zero: 100.
	MaxClientConn int
	// StatsPassword, AdminPassword and AppPassword are the passwords of
	// StatsUser, AdminUser and AppUser. Empty: a fixed one per user.
	StatsPassword string
	AdminPassword string
	AppPassword   string
}

// withDefaults returns o with every zero field given its default.
func (o Options) withDefaults() Options {
	if len(o.Databases) == 0 {
		o.Databases = []string{"test"}
	}
	if o.PoolSize == 0 {
		o.PoolSize = 2
	}
	if o.PoolMode == "" {
		o.PoolMode = "session"
	}
	if o.MaxClientConn == 0 {
		o.MaxClientConn = 100
	}
	if o.StatsPassword == "" {
		o.StatsPassword = "stats-secret"
	}
	if o.AdminPassword == "" {
		o.AdminPassword = "admin-secret"
	}
	if o.AppPassword == "" {
		o.AppPassword = "app-secret"
	}
	return o
}

// PgBouncer is one private PgBouncer on 127.0.0.1. It is not safe for
// concurrent Stop, Restart, Pause and Resume; the tests that use it drive
// it from one goroutine.
type PgBouncer struct {
	t    testing.TB
	opts Options
	dir  string
	cred *syscall.Credential // nil: run as this process's user
	port int

	mu   sync.Mutex
	proc *process // nil while stopped
	log  nettest.SyncBuffer
}

// process is one run of pgbouncer.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait has returned
}

// Start starts a PgBouncer on a free 127.0.0.1 port in front of the
// machine's PostgreSQL, returns once its console answers, and kills it
// when the test ends. It skips the test when PgBouncer or PostgreSQL is
// missing (or fails it when RequireEnv is "1").
func Start(t testing.TB, opts Options) *PgBouncer {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		missing(t, fmt.Sprintf("%s is missing (apt-get install pgbouncer)", Binary))
	}
	p := &PgBouncer{t: t, opts: opts.withDefaults()}
	for _, db := range p.opts.Databases {
		if err := postgresUp(db); err != nil {
			missing(t, fmt.Sprintf("PostgreSQL database %s on %s, with trust for user postgres: %v", db, PostgresAddr, err))
		}
	}
	var err error
	if p.cred, err = runAs(); err != nil {
		t.Fatalf("pgbouncertest: %v", err)
	}
	if p.dir, err = p.makeDir(); err != nil {
		t.Fatalf("pgbouncertest: %v", err)
	}
	// Registered after the directory's removal, so that it runs first
	// (cleanups run last-in first-out): the process goes, then its files.
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("pgbouncertest: PgBouncer on port %d logged:\n%s", p.port, p.log.String())
		}
	})

	var lastErr error
	for range startAttempts {
		if p.port, err = nettest.FreePort(); err != nil {
			t.Fatalf("pgbouncertest: %v", err)
		}
		if lastErr = p.start(); lastErr == nil {
			return p
		}
	}
	t.Fatalf("pgbouncertest: %v", lastErr)
	return nil
}

// missing skips the test, or fails it when RequireEnv is "1".
func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("pgbouncertest: %s, but %s=1", what, RequireEnv)
	}
	t.Skipf("pgbouncertest: skipped: %s (%s=1 makes this a failure)", what, RequireEnv)
}

// postgresUp logs in to database of the machine's PostgreSQL as PgBouncer
// will.
func postgresUp(database string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u := url.URL{Scheme: "postgres", User: url.User(AppUser), Host: PostgresAddr, Path: "/" + database, RawQuery: "sslmode=disable"}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// runAs is the user PgBouncer runs as: postgres when this process is root,
// because PgBouncer refuses to run as root, else this process's own user.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PgBouncer needs a user to run as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres: gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// makeDir creates the directory of PgBouncer's configuration, owned by the
// user PgBouncer runs as, and removes it when the test ends. testing's
// TempDir will not do: its parent is private to this process's user, so
// postgres could not reach the files.
func (p *PgBouncer) makeDir() (string, error) {
	base := os.TempDir()
	if !reachable(base) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "pgbouncertest-")
	if err != nil {
		return "", fmt.Errorf("configuration directory: %w", err)
	}
	p.t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if p.cred != nil {
		if err := os.Chown(dir, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return "", fmt.Errorf("configuration directory: %w", err)
		}
	}
	return dir, nil
}

// reachable reports whether every directory from / down to dir may be
// traversed by any user.
func reachable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// Addr is PgBouncer's host:port.
func (p *PgBouncer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// ConsoleURL is a URL of the admin console for StatsUser with password,
// which need not be the right one.
func (p *PgBouncer) ConsoleURL(password string) string {
	return p.url(StatsUser, password, "pgbouncer")
}

// StatsURL is ConsoleURL with StatsUser's right password.
func (p *PgBouncer) StatsURL() string { return p.ConsoleURL(p.opts.StatsPassword) }

// AdminURL is a URL of the admin console for AdminUser, who may change
// PgBouncer's settings.
func (p *PgBouncer) AdminURL() string { return p.url(AdminUser, p.opts.AdminPassword, "pgbouncer") }

// AppDSN is a client's URL of the app's database (the first of
// Options.Databases) through PgBouncer.
func (p *PgBouncer) AppDSN() string { return p.url(AppUser, p.opts.AppPassword, p.opts.Databases[0]) }

// Options are the options PgBouncer was started with, defaults filled in.
func (p *PgBouncer) Options() Options { return p.opts }

// url builds a postgres:// URL of PgBouncer. TLS is off: PgBouncer is not
// configured for it, and a client that asked first would only add a round
// trip.
func (p *PgBouncer) url(login, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(login, password),
		Host:     p.Addr(),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Admin runs one command on the admin console as AdminUser (SET, RELOAD,
// PAUSE...), failing the test if PgBouncer refuses it.
func (p *PgBouncer) Admin(ctx context.Context, command string) {
	p.t.Helper()
	cfg, err := consoleConfig(p.AdminURL())
	if err != nil {
		p.t.Fatalf("pgbouncertest: %v", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		p.t.Fatalf("pgbouncertest: admin console: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, command); err != nil {
		p.t.Fatalf("pgbouncertest: %s: %v", command, err)
	}
}

// Log is what PgBouncer has logged so far, over every run.
func (p *PgBouncer) Log() string { return p.log.String() }

// Stop kills PgBouncer and waits for it to exit, as a crash would: every
// client's connection breaks. Its port is kept, so Restart brings a
// PgBouncer back where clients expect it. Stopping a stopped PgBouncer does
// nothing.
func (p *PgBouncer) Stop() {
	p.mu.Lock()
	proc := p.proc
	p.proc = nil
	p.mu.Unlock()
	if proc == nil {
		return
	}
	// SIGKILL also ends a paused process, which would hold any other
	// signal until resumed.
	_ = proc.cmd.Process.Kill()
	<-proc.done
}

// Restart stops PgBouncer if it runs and starts a fresh one, with empty
// pools, on the same port, returning once its console answers.
func (p *PgBouncer) Restart() {
	p.t.Helper()
	p.Stop()
	if err := p.start(); err != nil {
		p.t.Fatalf("pgbouncertest: restart on port %d: %v", p.port, err)
	}
}

// Pause freezes PgBouncer with SIGSTOP: it keeps its connections and
// accepts new ones in the kernel's backlog, but answers nothing, as a
// PgBouncer stuck on a full disk or a swapped-out machine would. Resume
// thaws it.
func (p *PgBouncer) Pause() { p.signal(syscall.SIGSTOP) }

// Resume thaws a paused PgBouncer with SIGCONT; it then answers what it was
// sent meanwhile.
func (p *PgBouncer) Resume() { p.signal(syscall.SIGCONT) }

func (p *PgBouncer) signal(sig syscall.Signal) {
	p.t.Helper()
	p.mu.Lock()
	proc := p.proc
	p.mu.Unlock()
	if proc == nil {
		p.t.Fatalf("pgbouncertest: %v: PgBouncer is stopped", sig)
	}
	if err := proc.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("pgbouncertest: %v: %v", sig, err)
	}
}

// start writes the configuration, runs pgbouncer on p.port and waits until
// its console answers.
func (p *PgBouncer) start() error {
	ini := filepath.Join(p.dir, "pgbouncer.ini")
	users := filepath.Join(p.dir, "userlist.txt")
	if err := p.writeFile(ini, p.config(users)); err != nil {
		return err
	}
	if err := p.writeFile(users, p.userlist()); err != nil {
		return err
	}
	cmd := exec.Command(Binary, ini)
	cmd.Stdout, cmd.Stderr = &p.log, &p.log
	// Its own process group, so that a signal meant for the test's
	// terminal (^C) does not reach it before the cleanup does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", Binary, err)
	}
	proc := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(proc.done)
	}()
	if err := p.waitReady(proc.done); err != nil {
		_ = cmd.Process.Kill()
		<-proc.done
		return fmt.Errorf("pgbouncer on %s: %w; its log:\n%s", p.Addr(), err, p.log.String())
	}
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()
	return nil
}

// writeFile writes a file readable only by the user PgBouncer runs as: the
// userlist holds passwords.
func (p *PgBouncer) writeFile(name, content string) error {
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(name), err)
	}
	if p.cred != nil {
		if err := os.Chown(name, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", filepath.Base(name), err)
		}
	}
	return nil
}

// config is pgbouncer.ini. auth_type md5, so that a wrong password is
// refused as in production; no ignore_startup_parameters, so that a client
// sending one PgBouncer does not know is refused as in production.
func (p *PgBouncer) config(userlist string) string {
	o := p.opts
	var b strings.Builder
	b.WriteString("[databases]\n")
	pgHost, pgPort, _ := net.SplitHostPort(PostgresAddr)
	for _, db := range o.Databases {
		fmt.Fprintf(&b, "%s = host=%s port=%s dbname=%s\n", db, pgHost, pgPort, db)
	}
	fmt.Fprintf(&b, `
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = md5
auth_file = %s
admin_users = %s
stats_users = %s
pool_mode = %s
default_pool_size = %d
reserve_pool_size = %d
max_client_conn = %d
logfile =
pidfile =
log_connections = 0
log_disconnections = 0
`, p.port, userlist, AdminUser, StatsUser, o.PoolMode, o.PoolSize, o.ReservePoolSize, o.MaxClientConn)
	if o.QueryWaitTimeout > 0 {
		fmt.Fprintf(&b, "query_wait_timeout = %s\n",
			strconv.FormatFloat(o.QueryWaitTimeout.Seconds(), 'f', -1, 64))
	}
	return b.String()
}

// userlist is the auth_file: plain passwords, which md5 authentication
// accepts. AppUser's is also what PgBouncer sends PostgreSQL, whose trust
// authentication ignores it.
func (p *PgBouncer) userlist() string {
	o := p.opts
	var b strings.Builder
	for _, u := range [][2]string{
		{StatsUser, o.StatsPassword},
		{AdminUser, o.AdminPassword},
		{AppUser, o.AppPassword},
	} {
		fmt.Fprintf(&b, "%q %q\n", u[0], u[1])
	}
	return b.String()
}

// waitReady connects to the console until it answers SHOW VERSION, the
// process exits (done closes), or readyTimeout passes.
func (p *PgBouncer) waitReady(done <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if lastErr = p.ping(); lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("console not answering after %s: %w", readyTimeout, lastErr)
		}
		select {
		case <-done:
			return fmt.Errorf("exited before its console answered (last try: %w)", lastErr)
		case <-tick.C:
		}
	}
}

// ping logs in to the console and runs SHOW VERSION.
func (p *PgBouncer) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	cfg, err := consoleConfig(p.StatsURL())
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "SHOW VERSION")
	return err
}

// consoleConfig is pgx's configuration for the admin console: the simple
// query protocol, the only one it speaks, and no startup parameters, which
// the console refuses but pgx takes from the environment (PGOPTIONS).
func consoleConfig(consoleURL string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(consoleURL)
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cfg.RuntimeParams = map[string]string{}
	return cfg, nil
}
