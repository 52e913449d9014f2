package poolwatch

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestNewReaderChecksURLs(t *testing.T) {
	const secret = "s3cret-Pw"
	bad := []struct {
		name, url, wantErr string
	}{
		{"http scheme", "http://stats:" + secret + "@127.0.0.1:6432/pgbouncer", `scheme "http"`},
		{"no scheme", "stats:" + secret + "@127.0.0.1:6432/pgbouncer", "scheme"},
		{"keyword/value", "host=127.0.0.1 user=stats password=" + secret + " dbname=pgbouncer", "scheme"},
		{"app database", "postgres://stats:" + secret + "@127.0.0.1:6432/app", `database "app", want "pgbouncer"`},
		{"bad port", "postgres://stats:" + secret + "@127.0.0.1:64x32/pgbouncer", ""},
		{"bad escape", "postgres://stats:" + secret + "%zz@127.0.0.1:6432/pgbouncer", "not a URL"},
		{"bad sslmode", "postgres://stats:" + secret + "@127.0.0.1:6432/pgbouncer?sslmode=maybe", "sslmode"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewReader(ReaderOptions{URLs: []string{"postgres://stats@127.0.0.1:6432/pgbouncer", tt.url}})
			if err == nil {
				r.Close()
				t.Fatalf("NewReader(%q) accepted it", tt.url)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "console URL 2") {
				t.Errorf("got error %q, want one naming URL 2 and containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}

	if _, err := NewReader(ReaderOptions{}); err == nil {
		t.Error("NewReader with no URL: got no error")
	}

	for _, good := range []string{
		"postgres://stats:pw@127.0.0.1:6432/pgbouncer",
		"postgresql://stats@[::1]:6432/pgbouncer?sslmode=disable",
		"postgres://stats:pw@127.0.0.1:6432/?dbname=pgbouncer",
	} {
		r, err := NewReader(ReaderOptions{URLs: []string{good}})
		if err != nil {
			t.Errorf("NewReader(%q): %v", good, err)
			continue
		}
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

// TestConsoleConfig checks what pgx will send the console: the simple
// protocol, and no startup parameter PgBouncer would refuse, whatever the
// environment adds.
func TestConsoleConfig(t *testing.T) {
	t.Setenv("PGOPTIONS", "-c statement_timeout=5s")
	t.Setenv("PGTZ", "UTC")
	t.Setenv("PGMAXPROTOCOLVERSION", "3.2")
	cfg, err := consoleConfig("postgres://stats@127.0.0.1:6432/pgbouncer?search_path=x")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DefaultQueryExecMode != pgx.QueryExecModeSimpleProtocol {
		t.Errorf("query mode %v, want the simple protocol", cfg.DefaultQueryExecMode)
	}
	if cfg.StatementCacheCapacity != 0 || cfg.DescriptionCacheCapacity != 0 {
		t.Errorf("caches %d and %d, want none", cfg.StatementCacheCapacity, cfg.DescriptionCacheCapacity)
	}
	if len(cfg.RuntimeParams) != 1 || cfg.RuntimeParams["application_name"] != "lanegate" {
		t.Errorf("startup parameters %v, want only application_name=lanegate", cfg.RuntimeParams)
	}
	if cfg.MaxProtocolVersion != "3.0" {
		t.Errorf("protocol up to %s, want 3.0", cfg.MaxProtocolVersion)
	}

	cfg, err = consoleConfig("postgres://stats@127.0.0.1:6432/pgbouncer?application_name=lanegate-eu")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.RuntimeParams["application_name"]; got != "lanegate-eu" {
		t.Errorf("application_name %q, want the URL's lanegate-eu", got)
	}
}

func TestRedact(t *testing.T) {
	tests := []struct {
		in, want string
		secret   string // must not be in the output
	}{
		{
			in:     "postgres://stats:hunter2@127.0.0.1:6432/pgbouncer",
			want:   "postgres://stats:xxxxx@127.0.0.1:6432/pgbouncer",
			secret: "hunter2",
		},
		{
			in:   "postgres://stats@127.0.0.1:6432/pgbouncer?sslmode=disable",
			want: "postgres://stats@127.0.0.1:6432/pgbouncer?sslmode=disable",
		},
		{
			in:     "postgresql://stats:p%40ss%3Aw%2Ford@db.internal/pgbouncer",
			want:   "postgresql://stats:xxxxx@db.internal/pgbouncer",
			secret: "p%40ss",
		},
		{
			in:     "postgres://127.0.0.1:6432/pgbouncer?user=stats&password=hunter2",
			want:   "postgres://127.0.0.1:6432/pgbouncer?password=xxxxx&user=stats",
			secret: "hunter2",
		},
		{
			in:     "postgres://stats:pw@host/pgbouncer?sslpassword=keypass",
			want:   "postgres://stats:xxxxx@host/pgbouncer?sslpassword=xxxxx",
			secret: "keypass",
		},
		// Unparsable: an unescaped @ and a space in the password.
		{in: "postgres://stats:p@ss word@127.0.0.1/pgbouncer", secret: "ss word"},
		{in: "postgres://stats:hun%zzter@127.0.0.1/pgbouncer", secret: "hun%zzter"},
		{in: "host=127.0.0.1 user=stats password=hunter2 dbname=pgbouncer", secret: "hunter2"},
		{in: "host=127.0.0.1 password='hun ter2' dbname=pgbouncer", secret: "hun ter2"},
		{in: "stats:hunter2@127.0.0.1:6432/pgbouncer", want: "stats:xxxxx@127.0.0.1:6432/pgbouncer", secret: "hunter2"},
		{in: "", want: ""},
	}
	for _, tt := range tests {
		got := Redact(tt.in)
		if tt.want != "" && got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if tt.secret != "" && strings.Contains(got, tt.secret) {
			t.Errorf("Redact(%q) = %q, which still holds %q", tt.in, got, tt.secret)
		}
	}
}

func TestShowRefusesAnythingButOneWord(t *testing.T) {
	// A console nobody listens on: a word that got through would fail
	// with a connection error instead.
	r, err := NewReader(ReaderOptions{URLs: []string{"postgres://stats@127.0.0.1:1/pgbouncer?sslmode=disable"}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, what := range []string{"", "POOLS; DROP", "POOLS;", "POOLS --", "pools\n", "a b", "POOLS'", "ÄRGER", "STATS_TOTALS2"} {
		_, err := r.Show(context.Background(), what)
		if !errors.Is(err, errShowWhat) {
			t.Errorf("Show(%q): got %v, want a refusal", what, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.Show(ctx, "stats_totals"); err == nil || errors.Is(err, errShowWhat) {
		t.Errorf("Show(stats_totals): got %v, want it sent (and failing to connect)", err)
	}
}

func TestReadAfterClose(t *testing.T) {
	r, err := NewReader(ReaderOptions{URLs: []string{"postgres://stats@127.0.0.1:1/pgbouncer"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := r.Read(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: got %v, want ErrClosed", err)
	}
	if _, err := r.Show(context.Background(), "POOLS"); !errors.Is(err, ErrClosed) {
		t.Errorf("Show after Close: got %v, want ErrClosed", err)
	}
}

func TestPickDatabase(t *testing.T) {
	console := databaseRow{name: "pgbouncer", poolSize: 2}
	app := databaseRow{name: "app", poolSize: 20}
	other := databaseRow{name: "reports", poolSize: 5}
	tests := []struct {
		name    string
		dbs     []databaseRow
		want    string
		got     databaseRow
		wantErr []string
	}{
		{name: "the only one", dbs: []databaseRow{console, app}, got: app},
		{name: "named", dbs: []databaseRow{console, app, other}, want: "reports", got: other},
		{name: "the console itself, named", dbs: []databaseRow{console, app}, want: "pgbouncer", got: console},
		{name: "named, absent", dbs: []databaseRow{console, app}, want: "shop", wantErr: []string{`no database "shop"`, "app"}},
		{name: "several", dbs: []databaseRow{console, other, app}, wantErr: []string{"several databases (app, reports)", "LANEGATE_PGBOUNCER_DATABASE"}},
		{name: "none", dbs: []databaseRow{console}, wantErr: []string{"no database besides its console", "LANEGATE_PGBOUNCER_DATABASE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pickDatabase(tt.dbs, tt.want)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				for _, part := range tt.wantErr {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("error %q does not contain %q", err, part)
					}
				}
				return
			}
			if err != nil || got != tt.got {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.got)
			}
		})
	}
}

func TestPoolOf(t *testing.T) {
	db := databaseRow{name: "app", poolSize: 10, reservePool: 2}
	pools := []poolRow{
		{database: "app", user: "django", figures: Pool{ClActive: 4, ClWaiting: 1, SvActive: 4, SvIdle: 1, SvUsed: 1, SvTested: 1, SvLogin: 1, MaxWait: time.Second, Mode: "session"}},
		{database: "app", user: "worker", figures: Pool{ClActive: 2, ClWaiting: 3, SvActive: 2, SvIdle: 2, MaxWait: 3 * time.Second, Mode: "session"}},
		{database: "reports", user: "django", figures: Pool{ClActive: 7, ClWaiting: 7, SvActive: 7, MaxWait: time.Hour}},
		{database: "pgbouncer", user: "pgbouncer", figures: Pool{ClActive: 1}},
	}
	tests := []struct {
		name string
		user string
		rows []poolRow
		want Pool
	}{
		{
			name: "one user",
			user: "django",
			rows: pools,
			want: Pool{Database: "app", User: "django", Size: 10, ReservePool: 2, ClActive: 4, ClWaiting: 1,
				SvActive: 4, SvIdle: 1, SvUsed: 1, SvTested: 1, SvLogin: 1, MaxWait: time.Second, Mode: "session"},
		},
		{
			name: "every user summed, a pool_size each, the longest wait",
			rows: pools,
			want: Pool{Database: "app", Size: 20, ReservePool: 4, ClActive: 6, ClWaiting: 4,
				SvActive: 6, SvIdle: 3, SvUsed: 1, SvTested: 1, SvLogin: 1, MaxWait: 3 * time.Second, Mode: "session"},
		},
		{
			name: "a pool not made yet: empty, with its size and the default mode",
			user: "nobody",
			rows: pools,
			want: Pool{Database: "app", User: "nobody", Size: 10, ReservePool: 2, Mode: "transaction"},
		},
		{
			name: "no pool of any user yet",
			want: Pool{Database: "app", Size: 10, ReservePool: 2, Mode: "transaction"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := poolOf(db, tt.rows, tt.user, "transaction"); got != tt.want {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}

	t.Run("the database's own mode before the default", func(t *testing.T) {
		db := databaseRow{name: "app", poolSize: 10, mode: "statement"}
		if got := poolOf(db, nil, "", "session").Mode; got != "statement" {
			t.Fatalf("got mode %q, want statement", got)
		}
	})
}

func TestPoolAdd(t *testing.T) {
	a := Pool{Database: "app", Size: 10, ReservePool: 1, ClActive: 1, ClWaiting: 2, SvActive: 3, SvIdle: 4, SvUsed: 5, SvTested: 6, SvLogin: 7, MaxWait: 2 * time.Second, Mode: "session"}
	b := Pool{Database: "app", Size: 20, ReservePool: 2, ClActive: 10, ClWaiting: 20, SvActive: 30, SvIdle: 40, SvUsed: 50, SvTested: 60, SvLogin: 70, MaxWait: time.Second, Mode: "session"}
	want := Pool{Database: "app", Size: 30, ReservePool: 3, ClActive: 11, ClWaiting: 22, SvActive: 33, SvIdle: 44, SvUsed: 55, SvTested: 66, SvLogin: 77, MaxWait: 2 * time.Second, Mode: "session"}
	if got := a.add(b); got != want {
		t.Errorf("a+b: got %+v, want %+v", got, want)
	}
	if got := b.add(a); got.MaxWait != 2*time.Second {
		t.Errorf("b+a: MaxWait %v, want the longer, 2s", got.MaxWait)
	}
}
