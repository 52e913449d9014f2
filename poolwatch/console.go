package poolwatch

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jonboulle/clockwork"
)

// metaEvery is how often SHOW DATABASES and SHOW CONFIG are read again on
// a connection that stays up. They change only when an operator reloads
// PgBouncer, so a few seconds' lag costs nothing, while SHOW POOLS, which
// changes every moment, is read on every poll.
const metaEvery = 5 * time.Second

// terminateTimeout bounds the goodbye (a Terminate message) sent when a
// connection is dropped. It is a courtesy to PgBouncer, which notices a
// closed socket anyway; a console that hangs must not hold up the read
// that gave up on it.
const terminateTimeout = 100 * time.Millisecond

// consoleDatabase is the database name of PgBouncer's admin console.
const consoleDatabase = "pgbouncer"

// ErrClosed is what Read and Show return once the Reader is closed.
var ErrClosed = errors.New("poolwatch: reader closed")

// errShowWhat is what Show returns for anything but one SHOW word.
var errShowWhat = errors.New("not one word of letters and underscores")

// ReaderOptions says which consoles to read and which pool to report.
type ReaderOptions struct {
	// URLs are postgres:// URLs of admin consoles (database pgbouncer),
	// one per PgBouncer process. Several PgBouncers behind one address
	// (so_reuseport) each report only their own clients, so each needs a
	// URL of its own that reaches it, and their pools are summed. As with
	// libpq, what a URL leaves out (user, password, sslmode) may come
	// from PG* environment variables or ~/.pgpass; startup parameters
	// (PGOPTIONS, PGTZ) are not sent: the console refuses most of them
	// and needs none.
	URLs []string
	// Database is the app's database as PgBouncer names it. Empty: the
	// only database in SHOW DATABASES besides "pgbouncer"; none or
	// several is an error.
	Database string
	// User is the app's database user. Empty: every pool of Database,
	// summed.
	User string
	// Clock paces the re-reading of SHOW DATABASES and SHOW CONFIG. Nil:
	// the real clock.
	Clock clockwork.Clock
}

// Reader reads the app's pool from PgBouncer's admin consoles. It keeps one
// connection per console, opened on the first Read and opened again after
// any error, so a poll costs one round trip rather than a login.
//
// A Reader is safe for concurrent use; its Reads and Shows take turns, as
// each console's connection answers one query at a time.
type Reader struct {
	database string
	user     string
	clock    clockwork.Clock
	consoles []*console

	// turn is held by the one Read or Show at work. A channel rather
	// than a mutex, so that a caller waiting for its turn gives up when
	// its context ends.
	turn chan struct{}
	// closing ends when Close is called, and with it every read at work.
	closing   context.Context
	closeRead context.CancelFunc
}

// console is one PgBouncer's admin console. Only the holder of the
// Reader's turn touches it.
type console struct {
	url string // redacted: for errors
	cfg *pgx.ConnConfig

	conn *pgx.Conn // nil until connected, and after any error
	// databases and settings are SHOW DATABASES and SHOW CONFIG as read
	// at metaAt on conn; metaAt is zero when they are to be read.
	databases []databaseRow
	settings  Settings
	metaAt    time.Time
}

// NewReader checks every URL and returns a Reader of their consoles. It
// does no network I/O: the consoles are first reached by Read.
func NewReader(opts ReaderOptions) (*Reader, error) {
	if len(opts.URLs) == 0 {
		return nil, errors.New("poolwatch: no console URL")
	}
	r := &Reader{
		database: opts.Database,
		user:     opts.User,
		clock:    opts.Clock,
		turn:     make(chan struct{}, 1),
	}
	if r.clock == nil {
		r.clock = clockwork.NewRealClock()
	}
	for i, raw := range opts.URLs {
		cfg, err := consoleConfig(raw)
		if err != nil {
			return nil, fmt.Errorf("poolwatch: console URL %d (%s): %w", i+1, Redact(raw), err)
		}
		r.consoles = append(r.consoles, &console{url: Redact(raw), cfg: cfg})
	}
	r.closing, r.closeRead = context.WithCancel(context.Background())
	return r, nil
}

// consoleConfig parses a console's URL into pgx's configuration for the
// console: simple query protocol and nothing at startup that PgBouncer
// would refuse.
func consoleConfig(raw string) (*pgx.ConnConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url's error quotes the whole URL, password and all.
		return nil, errors.New("not a URL")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, fmt.Errorf("scheme %q, want postgres://", u.Scheme)
	}
	cfg, err := pgx.ParseConfig(raw)
	if err != nil {
		// pgx redacts what it quotes, but only as well as it can tell a
		// password in a string it could not parse: make sure.
		pw, _ := u.User.Password()
		return nil, errors.New(scrub(err.Error(), pw, url.QueryEscape(pw), url.PathEscape(pw)))
	}
	if cfg.Database != consoleDatabase {
		return nil, fmt.Errorf("database %q, want %q (the admin console)", cfg.Database, consoleDatabase)
	}
	// The console speaks only the simple query protocol: no Parse, no
	// Describe, so no statement or description to cache.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cfg.StatementCacheCapacity = 0
	cfg.DescriptionCacheCapacity = 0
	cfg.RuntimeParams = consoleParams(cfg.RuntimeParams)
	// PgBouncer 1.18 speaks protocol 3.0 only; pin it, whatever the
	// URL or PGMAXPROTOCOLVERSION ask.
	cfg.MinProtocolVersion = "3.0"
	cfg.MaxProtocolVersion = "3.0"
	return cfg, nil
}

// consoleParams are the startup parameters sent to the console. PgBouncer
// refuses a login with any parameter it does not track ("unsupported
// startup parameter"), unless its ignore_startup_parameters lists it, and
// pgx passes on whatever the URL or the environment (PGOPTIONS, PGTZ) adds.
// The console needs none of them; application_name shows who is reading
// in SHOW CLIENTS.
func consoleParams(from map[string]string) map[string]string {
	name := from["application_name"]
	if name == "" {
		name = "lanegate"
	}
	return map[string]string{"application_name": name}
}

// Read polls every console and returns the app's pool summed over them, with
// the settings of the first. The Reading is made only when every console
// answered: a sum that leaves one out would hide the clients it serves.
//
// SHOW POOLS is read every time; SHOW DATABASES and SHOW CONFIG when a
// connection is opened and every metaEvery after. A console's connection
// is dropped after any error, timeouts included, and opened again on the
// next Read. ctx bounds the whole read, connecting included; without a
// deadline, a console that hangs holds Read until the network gives up.
func (r *Reader) Read(ctx context.Context) (Reading, error) {
	ctx, done, err := r.begin(ctx)
	if err != nil {
		return Reading{}, fmt.Errorf("poolwatch: read: %w", err)
	}
	defer done()

	now := r.clock.Now()
	pools := make([]Pool, len(r.consoles))
	errs := make([]error, len(r.consoles))
	r.each(func(i int, c *console) { pools[i], errs[i] = c.read(ctx, now, r.database, r.user) })
	if err := errors.Join(errs...); err != nil {
		return Reading{}, err
	}

	total := pools[0]
	for i, p := range pools[1:] {
		if p.Database != total.Database {
			return Reading{}, fmt.Errorf("poolwatch: console %s serves database %q, console %s serves %q: set LANEGATE_PGBOUNCER_DATABASE",
				r.consoles[0].url, total.Database, r.consoles[i+1].url, p.Database)
		}
		total = total.add(p)
	}
	return Reading{Pool: total, Settings: r.consoles[0].settings, Consoles: len(r.consoles)}, nil
}

// Show runs SHOW what on every console and returns its rows, the outer
// index being the console's, each row a map of column name to text (NULL
// is ""). It is for operators and diagnostics (SHOW CLIENTS, SHOW STATS);
// what must be one word of letters and underscores, so that nothing but a
// SHOW ever reaches the console.
func (r *Reader) Show(ctx context.Context, what string) ([][]map[string]string, error) {
	if !isShowWord(what) {
		return nil, fmt.Errorf("poolwatch: SHOW %q: %w", what, errShowWhat)
	}
	ctx, done, err := r.begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("poolwatch: SHOW %s: %w", what, err)
	}
	defer done()

	out := make([][]map[string]string, len(r.consoles))
	errs := make([]error, len(r.consoles))
	r.each(func(i int, c *console) {
		errs[i] = c.guard(func() (err error) {
			if err = c.connect(ctx); err == nil {
				out[i], err = c.show(ctx, what)
			}
			return err
		})
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// isShowWord reports whether what is one word of [A-Za-z_].
func isShowWord(what string) bool {
	if what == "" {
		return false
	}
	for _, c := range what {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_') {
			return false
		}
	}
	return true
}

// Close ends a Read or Show at work, waits for it, and closes every
// console's connection. Read and Show then return ErrClosed.
func (r *Reader) Close() error {
	r.closeRead()
	r.turn <- struct{}{}
	defer func() { <-r.turn }()
	var errs []error
	for _, c := range r.consoles {
		if c.conn != nil {
			if err := c.close(); err != nil {
				errs = append(errs, fmt.Errorf("poolwatch: console %s: close: %w", c.url, err))
			}
		}
	}
	return errors.Join(errs...)
}

// begin waits for the Reader's turn and returns ctx, also ended by Close,
// and the func that gives the turn back.
func (r *Reader) begin(ctx context.Context) (context.Context, func(), error) {
	if r.closing.Err() != nil {
		return nil, nil, ErrClosed
	}
	select {
	case r.turn <- struct{}{}:
	case <-r.closing.Done():
		return nil, nil, ErrClosed
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("waiting for another read of the console: %w", ctx.Err())
	}
	if r.closing.Err() != nil {
		<-r.turn
		return nil, nil, ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.closing, cancel)
	return ctx, func() {
		stop()
		cancel()
		<-r.turn
	}, nil
}

// each calls f for every console, all at once when there are several, so
// that a read takes as long as the slowest console rather than the sum.
func (r *Reader) each(f func(i int, c *console)) {
	if len(r.consoles) == 1 {
		f(0, r.consoles[0])
		return
	}
	var wg sync.WaitGroup
	for i, c := range r.consoles {
		wg.Go(func() { f(i, c) })
	}
	wg.Wait()
}

// read polls the console for the pool of database and user (either may be
// empty, as in ReaderOptions).
func (c *console) read(ctx context.Context, now time.Time, database, user string) (Pool, error) {
	var p Pool
	err := c.guard(func() error {
		if err := c.connect(ctx); err != nil {
			return err
		}
		// A clock that went back is as good a reason to re-read as one
		// that went forward.
		if c.metaAt.IsZero() || now.Sub(c.metaAt) >= metaEvery || now.Before(c.metaAt) {
			if err := c.readMeta(ctx, now); err != nil {
				return err
			}
		}
		rows, err := c.show(ctx, "POOLS")
		if err != nil {
			return err
		}
		pools, err := parsePools(rows)
		if err != nil {
			return err
		}
		db, err := pickDatabase(c.databases, database)
		if err != nil {
			return err
		}
		p = poolOf(db, pools, user, c.settings.PoolMode)
		return nil
	})
	return p, err
}

// guard runs f and, when it fails, drops the console's connection and
// names the console in the error. Any error drops it: after a timeout the
// connection may still carry the late answer, and after a garbled one its
// state is unknown.
func (c *console) guard(f func() error) error {
	if err := f(); err != nil {
		c.drop()
		return fmt.Errorf("poolwatch: console %s: %w", c.url, err)
	}
	return nil
}

// connect opens the console's connection unless it is open.
func (c *console) connect(ctx context.Context) error {
	if c.conn != nil && !c.conn.IsClosed() {
		return nil
	}
	c.conn, c.metaAt = nil, time.Time{}
	conn, err := pgx.ConnectConfig(ctx, c.cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	c.conn = conn
	return nil
}

// readMeta reads SHOW DATABASES and SHOW CONFIG.
func (c *console) readMeta(ctx context.Context, now time.Time) error {
	rows, err := c.show(ctx, "DATABASES")
	if err != nil {
		return err
	}
	dbs, err := parseDatabases(rows)
	if err != nil {
		return err
	}
	if rows, err = c.show(ctx, "CONFIG"); err != nil {
		return err
	}
	settings, err := parseConfig(rows)
	if err != nil {
		return err
	}
	c.databases, c.settings, c.metaAt = dbs, settings, now
	return nil
}

// show runs SHOW what and returns its rows by column name.
func (c *console) show(ctx context.Context, what string) ([]map[string]string, error) {
	rows, err := c.conn.Query(ctx, "SHOW "+what)
	if err != nil {
		return nil, fmt.Errorf("SHOW %s: %w", what, err)
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	var out []map[string]string
	for rows.Next() {
		values := rows.RawValues()
		if len(values) != len(fields) {
			return nil, fmt.Errorf("SHOW %s: a row of %d values under %d columns", what, len(values), len(fields))
		}
		row := make(map[string]string, len(fields))
		for i, f := range fields {
			row[f.Name] = string(values[i])
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("SHOW %s: %w", what, err)
	}
	return out, nil
}

// drop closes the connection, if any, and forgets what was read on it.
func (c *console) drop() {
	if c.conn != nil {
		_ = c.close()
	}
	c.conn, c.metaAt = nil, time.Time{}
}

// close closes the connection, saying goodbye if the console listens.
func (c *console) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), terminateTimeout)
	defer cancel()
	err := c.conn.Close(ctx)
	c.conn = nil
	return err
}

// pickDatabase finds the app's database in SHOW DATABASES: the one named,
// or the only one besides the console's.
func pickDatabase(dbs []databaseRow, name string) (databaseRow, error) {
	var served []string
	var app []databaseRow
	for _, d := range dbs {
		if name != "" && d.name == name {
			return d, nil
		}
		if d.name != consoleDatabase {
			served = append(served, d.name)
			app = append(app, d)
		}
	}
	sort.Strings(served)
	list := strings.Join(served, ", ")
	switch {
	case name != "":
		return databaseRow{}, fmt.Errorf("PgBouncer serves no database %q (SHOW DATABASES has: %s)", name, list)
	case len(app) == 1:
		return app[0], nil
	case len(app) == 0:
		return databaseRow{}, errors.New("PgBouncer serves no database besides its console: set LANEGATE_PGBOUNCER_DATABASE to the app's")
	default:
		return databaseRow{}, fmt.Errorf("PgBouncer serves several databases (%s): set LANEGATE_PGBOUNCER_DATABASE to the app's", list)
	}
}

// poolOf sums the pools of db (of user, or of every user when user is
// empty). A pool PgBouncer has not made yet, because no client has logged
// in to it, is empty but has its size: it is what the first client gets.
func poolOf(db databaseRow, pools []poolRow, user, defaultMode string) Pool {
	p := Pool{Database: db.name, User: user}
	n := 0
	for _, r := range pools {
		if r.database != db.name || (user != "" && r.user != user) {
			continue
		}
		n++
		p = p.add(r.figures)
	}
	// Each pool of the database may open pool_size connections.
	n = max(n, 1)
	p.Size = n * db.poolSize
	p.ReservePool = n * db.reservePool
	if p.Mode == "" {
		p.Mode = db.mode
	}
	if p.Mode == "" {
		p.Mode = defaultMode
	}
	return p
}

// add is the sum of two consoles' pools: counts add up, the longest wait
// is the longest of either.
func (p Pool) add(q Pool) Pool {
	p.Size += q.Size
	p.ReservePool += q.ReservePool
	p.ClActive += q.ClActive
	p.ClWaiting += q.ClWaiting
	p.SvActive += q.SvActive
	p.SvIdle += q.SvIdle
	p.SvUsed += q.SvUsed
	p.SvTested += q.SvTested
	p.SvLogin += q.SvLogin
	p.MaxWait = max(p.MaxWait, q.MaxWait)
	if p.Mode == "" {
		p.Mode = q.Mode
	}
	return p
}

// redacted is what stands for a password in a redacted URL.
const redacted = "xxxxx"

// Redact returns url with any password replaced by "xxxxx", for logs and
// errors: the userinfo's password and password or sslpassword query
// values. A string that does not parse as a URL is redacted by pattern,
// erring on the side of hiding too much.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Opaque != "" {
		return redactText(raw)
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), redacted)
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return redactText(raw)
		}
		changed := false
		for k := range q {
			if isPasswordKey(k) {
				q[k] = []string{redacted}
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
		}
	}
	return u.String()
}

func isPasswordKey(k string) bool {
	k = strings.ToLower(k)
	return k == "password" || k == "sslpassword"
}

// redactText hides passwords in a string that is not a well-formed URL:
// everything between "user:" (after the scheme's "//", if any) and the
// last "@", and every password=value.
func redactText(s string) string {
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + len("://")
	}
	rest := s[start:]
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if colon := strings.Index(rest[:at], ":"); colon >= 0 {
			s = s[:start] + rest[:colon+1] + redacted + rest[at:]
		}
	}
	return passwordValue().ReplaceAllString(s, "${1}"+redacted)
}

// passwordValue matches a password=value of a query or keyword/value
// string, quoted or not. A function rather than a package variable: no
// package state, and it is compiled only for strings that fail to parse.
func passwordValue() *regexp.Regexp {
	return regexp.MustCompile(`(?i)((?:^|[\s&?;])(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&;]*)`)
}

// scrub replaces every occurrence of each secret in s.
func scrub(s string, secrets ...string) string {
	for _, secret := range secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, redacted)
		}
	}
	return s
}
