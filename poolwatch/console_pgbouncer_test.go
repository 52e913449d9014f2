package poolwatch

// The Reader against a real PgBouncer (Debian's 1.18), started by
// internal/pgbouncertest in front of the machine's PostgreSQL. These tests
// skip when either is missing, unless TEST_REQUIRE_PGBOUNCER=1.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jonboulle/clockwork"

	"github.com/lanegate/lanegate/internal/pgbouncertest"
)

// newReader returns a Reader closed when the test ends.
func newReader(t *testing.T, opts ReaderOptions) *Reader {
	t.Helper()
	r, err := NewReader(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// read reads with a generous deadline and fails the test on an error.
func read(t *testing.T, r *Reader) Reading {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := r.Read(ctx)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return got
}

// readUntil polls Read until ok holds of a reading, and fails the test
// with the last reading if it does not within 10 s. PgBouncer updates its
// counts as it processes its clients' packets, a moment after they were
// sent; nothing tells us when, so the test looks until it sees.
func readUntil(t *testing.T, r *Reader, what string, ok func(Pool) bool) Reading {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		got := read(t, r)
		if ok(got.Pool) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s; last reading %+v", what, got.Pool)
		}
		<-tick.C
	}
}

// clients are connections to the app's database through PgBouncer.
type clients struct {
	t     *testing.T
	dsn   string
	conns []*pgx.Conn
	wg    sync.WaitGroup
	stop  context.CancelFunc
	ctx   context.Context
}

// newClients returns a set of client connections closed, and whose queries
// in flight are abandoned, when the test ends.
func newClients(t *testing.T, dsn string) *clients {
	ctx, cancel := context.WithCancel(context.Background())
	c := &clients{t: t, dsn: dsn, ctx: ctx, stop: cancel}
	t.Cleanup(c.close)
	return c
}

// hold opens n connections and runs a query on each, which in session
// mode links it to a server connection until it disconnects.
func (c *clients) hold(n int) {
	c.t.Helper()
	for range n {
		conn := c.connect()
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		_, err := conn.Exec(ctx, "SELECT 1")
		cancel()
		if err != nil {
			c.t.Fatalf("a client's query through PgBouncer: %v", err)
		}
	}
}

// wait opens n connections and sends a query on each in the background,
// which waits in PgBouncer while the pool is taken. The queries end when
// the test does.
func (c *clients) wait(n int) {
	c.t.Helper()
	for range n {
		conn := c.connect()
		c.wg.Go(func() {
			// It fails when the test ends and cancels it.
			_, _ = conn.Exec(c.ctx, "SELECT 1")
		})
	}
}

func (c *clients) connect() *pgx.Conn {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.dsn)
	if err != nil {
		c.t.Fatalf("a client's login through PgBouncer: %v", err)
	}
	c.conns = append(c.conns, conn)
	return conn
}

func (c *clients) close() {
	c.stop()
	c.wg.Wait()
	for _, conn := range c.conns {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(ctx)
		cancel()
	}
	c.conns = nil
}

func TestReadSizeAndSettings(t *testing.T) {
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{
		PoolSize:         3,
		ReservePoolSize:  1,
		QueryWaitTimeout: 7 * time.Second,
		MaxClientConn:    50,
	})
	r := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}})
	got := read(t, r)
	want := Reading{
		// No client has logged in: the pool is not made yet, but has
		// its size.
		Pool: Pool{Database: "test", Size: 3, ReservePool: 1, Mode: "session"},
		Settings: Settings{
			QueryWaitTimeout:   7 * time.Second,
			PoolMode:           "session",
			MaxClientConn:      50,
			DefaultPoolSize:    3,
			ReservePoolTimeout: 5 * time.Second,
		},
		Consoles: 1,
	}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}

	// Named, the user's pool reads the same.
	named := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}, Database: "test", User: pgbouncertest.AppUser})
	want.Pool.User = pgbouncertest.AppUser
	if got := read(t, named); got != want {
		t.Fatalf("named database and user: got  %+v\nwant %+v", got, want)
	}
}

func TestReadFractionalQueryWaitTimeout(t *testing.T) {
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{QueryWaitTimeout: 1500 * time.Millisecond, PoolMode: "transaction"})
	got := read(t, newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}}))
	if got.Settings.QueryWaitTimeout != 1500*time.Millisecond {
		t.Errorf("QueryWaitTimeout %v, want 1.5s", got.Settings.QueryWaitTimeout)
	}
	if got.Settings.PoolMode != "transaction" || got.Pool.Mode != "transaction" {
		t.Errorf("pool mode %q, default %q; want transaction for both", got.Pool.Mode, got.Settings.PoolMode)
	}
}

func TestReadHeldAndWaitingClients(t *testing.T) {
	const size = 2
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: size, QueryWaitTimeout: time.Minute})
	r := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}})
	c := newClients(t, pgb.AppDSN())

	c.hold(size)
	got := readUntil(t, r, fmt.Sprintf("%d clients holding the pool", size), func(p Pool) bool {
		return p.SvActive == size && p.ClActive == size
	})
	if got.Pool.ClWaiting != 0 || got.Pool.MaxWait != 0 || got.Pool.Size != size {
		t.Errorf("pool taken but nobody waits: got %+v, want ClWaiting 0, MaxWait 0, Size %d", got.Pool, size)
	}

	c.wait(3)
	got = readUntil(t, r, "3 more clients waiting", func(p Pool) bool {
		return p.ClWaiting == 3 && p.MaxWait > 0
	})
	if got.Pool.SvActive != size || got.Pool.ClActive != size || got.Pool.User != "" {
		t.Errorf("got %+v, want SvActive %d, ClActive %d and the pool summed over users", got.Pool, size, size)
	}

	// The pool of one user is the same pool here; another user's is
	// empty.
	mine := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}, User: pgbouncertest.AppUser})
	if got := read(t, mine).Pool; got.SvActive != size || got.ClWaiting != 3 {
		t.Errorf("the app user's pool: got %+v, want SvActive %d, ClWaiting 3", got, size)
	}
	other := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}, User: "cron"})
	if got := read(t, other).Pool; got != (Pool{Database: "test", User: "cron", Size: size, Mode: "session"}) {
		t.Errorf("another user's pool: got %+v, want it empty, of size %d", got, size)
	}

	c.close()
	readUntil(t, r, "every client gone", func(p Pool) bool {
		return p.ClActive == 0 && p.ClWaiting == 0 && p.SvActive == 0 && p.MaxWait == 0
	})
}

func TestReadSumsConsoles(t *testing.T) {
	a := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 2, QueryWaitTimeout: 11 * time.Second})
	b := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 3, QueryWaitTimeout: 22 * time.Second})
	r := newReader(t, ReaderOptions{URLs: []string{a.StatsURL(), b.StatsURL()}})
	newClients(t, a.AppDSN()).hold(1)
	newClients(t, b.AppDSN()).hold(2)

	got := readUntil(t, r, "1 + 2 clients holding", func(p Pool) bool { return p.SvActive == 3 })
	if got.Consoles != 2 || got.Pool.Size != 5 || got.Pool.ClActive != 3 {
		t.Errorf("got %+v, want 2 consoles, Size 2+3, ClActive 1+2", got)
	}
	if got.Settings.QueryWaitTimeout != 11*time.Second || got.Settings.DefaultPoolSize != 2 {
		t.Errorf("settings %+v, want the first console's (11s, pool 2)", got.Settings)
	}

	// One console down: no reading at all, rather than half of one.
	b.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if got, err := r.Read(ctx); err == nil {
		t.Fatalf("one of two consoles down: got %+v, want an error", got)
	} else if !strings.Contains(err.Error(), b.Addr()) {
		t.Errorf("error %q does not name the console that failed (%s)", err, b.Addr())
	}
}

func TestReadSurvivesRestart(t *testing.T) {
	const password = "restart-Secret-93"
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 4, StatsPassword: password})
	r := newReader(t, ReaderOptions{URLs: []string{pgb.ConsoleURL(password)}})
	read(t, r)

	pgb.Stop()
	for i := range 2 { // the broken connection, then a refused one
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := r.Read(ctx)
		cancel()
		if err == nil {
			t.Fatalf("read %d with PgBouncer down: got no error", i+1)
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("error %q contains the password", err)
		}
		if !strings.Contains(err.Error(), "xxxxx") {
			t.Errorf("error %q does not name the console by its redacted URL", err)
		}
	}

	pgb.Restart()
	if got := read(t, r); got.Pool.Size != 4 {
		t.Errorf("after the restart: got %+v, want Size 4", got.Pool)
	}
}

func TestReadWrongPassword(t *testing.T) {
	const wrong = "not-The-Password-71"
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{})
	r := newReader(t, ReaderOptions{URLs: []string{pgb.ConsoleURL(wrong)}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := r.Read(ctx)
	if err == nil {
		t.Fatal("Read with a wrong password: got no error")
	}
	if !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("error %q does not say authentication failed", err)
	}
	if strings.Contains(err.Error(), wrong) {
		t.Errorf("error %q contains the password", err)
	}
	_, err = r.Show(ctx, "POOLS")
	if err == nil || strings.Contains(err.Error(), wrong) {
		t.Errorf("Show with a wrong password: got %v, want an error without the password", err)
	}
}

// TestReadHangingConsole freezes PgBouncer: a Read must give up when its
// context does, both on the open connection and on a new one (the kernel
// accepts it; PgBouncer never answers the login), and the Reader must work
// again once PgBouncer does.
func TestReadHangingConsole(t *testing.T) {
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{})
	r := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}})
	read(t, r)

	pgb.Pause()
	for _, conn := range []string{"open connection", "new connection"} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		_, err := r.Read(ctx)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: got %v, want the context's deadline", conn, err)
		}
		if took > 2*time.Second {
			t.Errorf("%s: Read took %v past a 300ms deadline", conn, took)
		}
	}

	pgb.Resume()
	if got := read(t, r); got.Pool.Size != 2 {
		t.Errorf("after resuming: got %+v, want Size 2", got.Pool)
	}
}

// TestReadRereadsSettings checks SHOW DATABASES and SHOW CONFIG are read
// when a connection opens and again after metaEvery, not on every poll.
func TestReadRereadsSettings(t *testing.T) {
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 2, QueryWaitTimeout: 10 * time.Second})
	clock := clockwork.NewFakeClock()
	r := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}, Clock: clock})
	if got := read(t, r); got.Pool.Size != 2 || got.Settings.QueryWaitTimeout != 10*time.Second {
		t.Fatalf("got %+v, want Size 2 and a 10s query_wait_timeout", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pgb.Admin(ctx, "SET default_pool_size = 5")
	pgb.Admin(ctx, "SET query_wait_timeout = 20")

	clock.Advance(metaEvery - time.Millisecond)
	if got := read(t, r); got.Pool.Size != 2 || got.Settings.QueryWaitTimeout != 10*time.Second {
		t.Errorf("before %v: got %+v, want the settings read before (Size 2, 10s)", metaEvery, got)
	}
	clock.Advance(time.Millisecond)
	if got := read(t, r); got.Pool.Size != 5 || got.Settings.QueryWaitTimeout != 20*time.Second {
		t.Errorf("after %v: got %+v, want the new settings (Size 5, 20s)", metaEvery, got)
	}
}

func TestReadDatabaseChoice(t *testing.T) {
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{Databases: []string{"test", "postgres"}, PoolSize: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	_, err := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}}).Read(ctx)
	if err == nil || !strings.Contains(err.Error(), "several databases (postgres, test)") ||
		!strings.Contains(err.Error(), "LANEGATE_PGBOUNCER_DATABASE") {
		t.Errorf("two databases, none named: got %v, want an error naming both and the variable", err)
	}

	_, err = newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}, Database: "shop"}).Read(ctx)
	if err == nil || !strings.Contains(err.Error(), `"shop"`) {
		t.Errorf("a database PgBouncer does not serve: got %v, want an error naming it", err)
	}

	got := read(t, newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}, Database: "postgres"}))
	if got.Pool.Database != "postgres" || got.Pool.Size != 3 {
		t.Errorf("named: got %+v, want database postgres of size 3", got.Pool)
	}
}

// TestReadStartupParametersFromEnvironment checks that what pgx takes from
// the environment does not reach the console, which refuses a login with a
// startup parameter it does not know.
func TestReadStartupParametersFromEnvironment(t *testing.T) {
	t.Setenv("PGOPTIONS", "-c statement_timeout=5s")
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{})
	read(t, newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}}))
}

func TestShow(t *testing.T) {
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{})
	b := pgbouncertest.Start(t, pgbouncertest.Options{})
	r := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL(), b.StatsURL()}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	got, err := r.Show(ctx, "CLIENTS")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d consoles' rows, want 2", len(got))
	}
	for i, rows := range got {
		// The reader's own login is a client of the console.
		found := false
		for _, row := range rows {
			if row["type"] == "C" && row["database"] == "pgbouncer" && row["user"] == pgbouncertest.StatsUser &&
				row["application_name"] == "lanegate" {
				found = true
			}
		}
		if !found {
			t.Errorf("console %d: SHOW CLIENTS has no row of lanegate's own login: %v", i, rows)
		}
	}

	if _, err := r.Show(ctx, "POOLS; DROP"); !errors.Is(err, errShowWhat) {
		t.Errorf(`Show("POOLS; DROP"): got %v, want a refusal`, err)
	}
	if _, err := r.Show(ctx, "BOGUS"); err == nil || !strings.Contains(err.Error(), "invalid command") {
		t.Errorf("Show(BOGUS): got %v, want PgBouncer's refusal", err)
	}
	// The refusal dropped the connection; the next Show makes another.
	if got, err := r.Show(ctx, "version"); err != nil || len(got[0]) != 1 || !strings.HasPrefix(got[0][0]["version"], "PgBouncer") {
		t.Errorf("Show(version): got %v, %v; want one row of PgBouncer's version", got, err)
	}
}

// TestReadConcurrently checks Reads and Shows from several goroutines take
// turns on each console's one connection (under the race detector).
func TestReadConcurrently(t *testing.T) {
	pgb := pgbouncertest.Start(t, pgbouncertest.Options{PoolSize: 6})
	r := newReader(t, ReaderOptions{URLs: []string{pgb.StatsURL()}})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 8 {
		wg.Go(func() {
			for range 5 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var err error
				if i%2 == 0 {
					var got Reading
					if got, err = r.Read(ctx); err == nil && got.Pool.Size != 6 {
						err = fmt.Errorf("size %d, want 6", got.Pool.Size)
					}
				} else {
					_, err = r.Show(ctx, "POOLS")
				}
				cancel()
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
