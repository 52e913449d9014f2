package poolwatch

// The Reader against a fake console that says what a test tells it to,
// for what a real PgBouncer will not do on demand: answer garbage, or hang
// at a chosen point.

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// answer is what the fake console sends for one query: a table, or an
// error, or nothing until the test ends (hang).
type answer struct {
	columns []string
	rows    [][]string // a nil value is NULL
	err     string
	hang    bool
}

// fakeConsole speaks just enough of the protocol for pgx: a login without
// password, then simple queries answered by script.
type fakeConsole struct {
	t  *testing.T
	ln net.Listener

	logins atomic.Int32
	// asked receives every query as it arrives.
	asked chan string

	mu     sync.Mutex
	script func(query string) answer
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func newFakeConsole(t *testing.T, script func(string) answer) *fakeConsole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeConsole{t: t, ln: ln, script: script, asked: make(chan string, 100)}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *fakeConsole) url() string {
	return "postgres://stats:pw@" + f.ln.Addr().String() + "/pgbouncer?sslmode=disable"
}

// waitAsked waits for the next query to arrive, failing the test if none
// does within 10 s.
func (f *fakeConsole) waitAsked() string {
	f.t.Helper()
	select {
	case q := <-f.asked:
		return q
	case <-time.After(10 * time.Second):
		f.t.Fatal("the fake console was asked nothing within 10s")
		return ""
	}
}

func (f *fakeConsole) setScript(script func(string) answer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = script
}

func (f *fakeConsole) close() {
	f.mu.Lock()
	f.closed = true
	conns := f.conns
	f.mu.Unlock()
	_ = f.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	f.wg.Wait()
}

func (f *fakeConsole) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			_ = c.Close()
			return
		}
		f.conns = append(f.conns, c)
		f.wg.Add(1)
		f.mu.Unlock()
		go f.serve(c)
	}
}

// serve answers one connection until it closes. Errors end it quietly:
// the client's side of the test says what went wrong.
func (f *fakeConsole) serve(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	be := pgproto3.NewBackend(c, c)
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return
	}
	f.logins.Add(1)
	be.Send(&pgproto3.AuthenticationOk{})
	// As PgBouncer does; pgx refuses to send a simple query without
	// knowing standard_conforming_strings is on.
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "1.18.0/bouncer"})
	be.Send(&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"})
	be.Send(&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		q, ok := msg.(*pgproto3.Query)
		if !ok {
			return // Terminate, or anything the console would refuse
		}
		f.asked <- q.String
		f.mu.Lock()
		a := f.script(q.String)
		f.mu.Unlock()
		if a.hang {
			// Until the client or the test closes the connection.
			_, _ = be.Receive()
			return
		}
		if a.err != "" {
			be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "08P01", Message: a.err})
		} else {
			fields := make([]pgproto3.FieldDescription, len(a.columns))
			for i, name := range a.columns {
				fields[i] = pgproto3.FieldDescription{Name: []byte(name), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
			}
			be.Send(&pgproto3.RowDescription{Fields: fields})
			for _, row := range a.rows {
				values := make([][]byte, len(row))
				for i, v := range row {
					values[i] = []byte(v)
				}
				be.Send(&pgproto3.DataRow{Values: values})
			}
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SHOW")})
		}
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if be.Flush() != nil {
			return
		}
	}
}

// pgbouncer118 answers as PgBouncer 1.18 does, with one pool of database
// app, 3 clients active and 1 waiting; pools, if not nil, replaces the
// answer to SHOW POOLS.
func pgbouncer118(pools *answer) func(string) answer {
	return func(q string) answer {
		switch q {
		case "SHOW DATABASES":
			return answer{
				columns: []string{"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool", "pool_mode", "max_connections", "current_connections", "paused", "disabled"},
				rows: [][]string{
					{"pgbouncer", "", "6432", "pgbouncer", "pgbouncer", "2", "0", "0", "statement", "0", "0", "0", "0"},
					{"app", "127.0.0.1", "5432", "app", "", "3", "0", "0", "", "0", "3", "0", "0"},
				},
			}
		case "SHOW CONFIG":
			return answer{
				columns: []string{"key", "value", "default", "changeable"},
				rows: [][]string{
					{"query_wait_timeout", "120", "120", "yes"},
					{"pool_mode", "session", "session", "yes"},
					{"max_client_conn", "100", "100", "yes"},
					{"default_pool_size", "3", "20", "yes"},
					{"reserve_pool_timeout", "5", "5", "yes"},
				},
			}
		case "SHOW POOLS":
			if pools != nil {
				return *pools
			}
			return answer{
				columns: []string{"database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode"},
				rows:    [][]string{{"app", "django", "3", "1", "3", "0", "0", "0", "0", "0", "250000", "session"}},
			}
		}
		return answer{err: "invalid command '" + q + "', use SHOW HELP;"}
	}
}

func TestReadGarbageDropsTheConnection(t *testing.T) {
	f := newFakeConsole(t, pgbouncer118(nil))
	r := newReader(t, ReaderOptions{URLs: []string{f.url()}})
	want := Pool{Database: "app", Size: 3, ClActive: 3, ClWaiting: 1, SvActive: 3, MaxWait: 250 * time.Millisecond, Mode: "session"}
	if got := read(t, r); got.Pool != want {
		t.Fatalf("got %+v, want %+v", got.Pool, want)
	}

	garbage := []struct {
		name    string
		pools   answer
		wantErr string
	}{
		{
			name:    "a column missing",
			pools:   answer{columns: []string{"database", "user", "cl_active"}, rows: [][]string{{"app", "django", "3"}}},
			wantErr: `no column "cl_waiting"`,
		},
		{
			name: "a word for a count",
			pools: answer{
				columns: []string{"database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait"},
				rows:    [][]string{{"app", "django", "3", "lots", "3", "0", "0", "0", "0", "0"}},
			},
			wantErr: `"cl_waiting" is "lots", not a count`,
		},
		{
			name:    "fewer values than columns",
			pools:   answer{columns: []string{"database", "user", "cl_active"}, rows: [][]string{{"app"}}},
			wantErr: "a row of 1 values under 3 columns",
		},
		{name: "an error", pools: answer{err: "out of memory"}, wantErr: "out of memory"},
	}
	for _, g := range garbage {
		t.Run(g.name, func(t *testing.T) {
			f.setScript(pgbouncer118(&g.pools))
			before := f.logins.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if got, err := r.Read(ctx); err == nil || !strings.Contains(err.Error(), g.wantErr) {
				t.Fatalf("got %+v, %v; want an error containing %q", got, err, g.wantErr)
			}
			f.setScript(pgbouncer118(nil))
			if got := read(t, r); got.Pool != want {
				t.Errorf("the next Read: got %+v, want %+v", got.Pool, want)
			}
			if got := f.logins.Load() - before; got != 1 {
				t.Errorf("%d logins after the garbage, want 1: a connection that said something wrong is not used again", got)
			}
		})
	}
}

// TestReadRereadsSettingsOnNewConnection checks a connection opened again
// reads SHOW DATABASES and SHOW CONFIG before its first SHOW POOLS, and a
// connection kept does not, until metaEvery has passed.
func TestReadRereadsSettingsOnNewConnection(t *testing.T) {
	f := newFakeConsole(t, pgbouncer118(nil))
	r := newReader(t, ReaderOptions{URLs: []string{f.url()}})
	queries := func() []string {
		var out []string
		for {
			select {
			case q := <-f.asked:
				out = append(out, q)
			default:
				return out
			}
		}
	}
	read(t, r)
	if got, want := strings.Join(queries(), ", "), "SHOW DATABASES, SHOW CONFIG, SHOW POOLS"; got != want {
		t.Errorf("first Read asked %s, want %s", got, want)
	}
	read(t, r)
	if got, want := strings.Join(queries(), ", "), "SHOW POOLS"; got != want {
		t.Errorf("second Read asked %s, want %s", got, want)
	}
	f.setScript(pgbouncer118(&answer{err: "boom"}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.Read(ctx); err == nil {
		t.Fatal("Read of a failing SHOW POOLS: got no error")
	}
	queries()
	f.setScript(pgbouncer118(nil))
	read(t, r)
	if got, want := strings.Join(queries(), ", "), "SHOW DATABASES, SHOW CONFIG, SHOW POOLS"; got != want {
		t.Errorf("Read on a new connection asked %s, want %s", got, want)
	}
}

// TestCloseEndsARead checks Close ends a Read stuck on a console that
// does not answer, and waits for it, rather than hanging with it.
func TestCloseEndsARead(t *testing.T) {
	f := newFakeConsole(t, func(string) answer { return answer{hang: true} })
	r, err := NewReader(ReaderOptions{URLs: []string{f.url()}})
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := r.Read(context.Background()) // no deadline: only Close ends it
		readErr <- err
	}()
	f.waitAsked() // the Read is at work, waiting for the answer

	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the Read Close ended: got %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the Read did not end within 10s of Close")
	}
	if _, err := r.Read(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: got %v, want ErrClosed", err)
	}
}

// TestReadWaitsItsTurnWithinItsContext checks a Read waiting for another
// to finish gives up when its own context ends.
func TestReadWaitsItsTurnWithinItsContext(t *testing.T) {
	f := newFakeConsole(t, func(string) answer { return answer{hang: true} })
	r := newReader(t, ReaderOptions{URLs: []string{f.url()}})
	first, cancelFirst := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = r.Read(first)
	}()
	f.waitAsked()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Read(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for another read") {
		t.Errorf("got %v, want the deadline while waiting for the other read", err)
	}
	cancelFirst()
	<-done
}
