// Package doctor checks a lanegate deployment against the stack behind it
// (lanegate's configuration, PgBouncer's admin console and, when asked, the
// app server) and says, for each mismatch, what to change.
//
// lanegate's promise rests on numbers kept in three places: the budget in
// its own configuration, the pool and its timeouts in pgbouncer.ini, and
// the threads gunicorn runs. Nothing else holds them against one another,
// and when they disagree the queue moves out of lanegate, where a request
// is shed cleanly with Retry-After, into PgBouncer or gunicorn, where it
// waits holding resources and ends as a 500. Run reads all three and
// returns one Finding per check.
package doctor

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/poolwatch"
)

// Console is what the doctor reads of PgBouncer's admin console.
// *poolwatch.Reader is one; tests script their own.
type Console interface {
	// Read returns the app's pool, summed over every console, and
	// PgBouncer's settings.
	Read(ctx context.Context) (poolwatch.Reading, error)
	// Show runs SHOW <what> on every console and returns each one's rows,
	// column name to text.
	Show(ctx context.Context, what string) ([][]map[string]string, error)
}

// DefaultTimeout bounds each read of the console and each wait of the
// app probe when Options.Timeout is zero: long enough for a loaded
// PgBouncer or a Django page to answer, short enough that the probe holds
// the app's threads only briefly.
const DefaultTimeout = 3 * time.Second

// Options say what the doctor reads.
type Options struct {
	// Config is lanegate's configuration, as config.Load returned it;
	// Run sizes it from the pool the console reports.
	Config config.Config
	// Console reads PgBouncer's admin console at
	// Config.PgBouncer.URLs. Nil means LANEGATE_PGBOUNCER_URL is not set:
	// the checks that need the console say they were not run.
	Console Console
	// Consoles name the consoles in findings, one per URL in
	// Config.PgBouncer.URLs, with secrets removed (poolwatch.Redact).
	// Errors that quote a URL are shown with these names instead.
	Consoles []string
	// App is the app server's URL (gunicorn's own address, not
	// lanegate's) to probe for threads; nil skips the probe. Only this
	// host is contacted, and only plain http is spoken.
	App *url.URL
	// ConnMaxAge is Django's CONN_MAX_AGE when the operator states it;
	// unstated, persistent connections are looked for in SHOW CLIENTS.
	ConnMaxAge ConnMaxAge
	// Timeout bounds each read of the console and each wait of the app
	// probe; zero means DefaultTimeout.
	Timeout time.Duration
}

// Run runs every check and returns their findings in a fixed order:
// the console, the configuration's own warnings, the budget against the
// pool, the lanes' queue timeouts against query_wait_timeout, pool_mode
// against Django's connections, max_client_conn, and the app's threads.
//
// The configuration is sized from the pool the console reports
// (config.Config.WithPool), as lanegate sizes itself when it starts with
// LANEGATE_PGBOUNCER_URL set, so the budget checked is the one lanegate
// would admit under.
func Run(ctx context.Context, opts Options) Report {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	d := &run{opts: opts, cfg: opts.Config}
	d.readConsole(ctx)
	d.limits = d.cfg.Limits()
	d.configWarnings()
	d.budget()
	d.queryWait()
	d.poolMode(ctx)
	d.maxClientConn(ctx)
	d.threads(ctx)
	return d.report
}

// run is one doctor's visit: what it read and what it found.
type run struct {
	opts Options
	// cfg is opts.Config sized from the pool, once the console is read;
	// limits are its admission limits.
	cfg    config.Config
	limits admission.Limits
	// reading is the console's, when read is true; otherwise unread says
	// why the console's checks cannot run.
	reading poolwatch.Reading
	read    bool
	unread  string
	report  Report
}

func (d *run) add(sev Severity, check, found, fix string) {
	d.report.Findings = append(d.report.Findings, Finding{Severity: sev, Check: check, Found: found, Fix: fix})
}

// notChecked records a console check that cannot run, and why.
func (d *run) notChecked(check string) {
	d.add(Warn, check, "not checked: "+d.unread, "")
}

// Names of the checks, as findings show them.
const (
	checkConfig        = "config"
	checkConsole       = "console"
	checkBudget        = "budget"
	checkQueryWait     = "query_wait"
	checkPoolMode      = "pool_mode"
	checkMaxClientConn = "max_client_conn"
	checkThreads       = "threads"
)

// configWarnings repeats what config.Load found doubtful: the doctor is
// where an operator looks for everything that may be wrong.
func (d *run) configWarnings() {
	for _, w := range d.cfg.Warnings() {
		d.add(Warn, checkConfig, w, "")
	}
}

// readConsole reads the pool and PgBouncer's settings once, for every
// check that needs them.
func (d *run) readConsole(ctx context.Context) {
	if d.opts.Console == nil {
		d.unread = "set LANEGATE_PGBOUNCER_URL"
		d.add(Warn, checkConsole, "LANEGATE_PGBOUNCER_URL is not set: PgBouncer's pool and settings are not read",
			"set LANEGATE_PGBOUNCER_URL to PgBouncer's admin console, for a login in its stats_users")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	r, err := d.opts.Console.Read(ctx)
	if err != nil {
		d.unread = "PgBouncer's console did not answer"
		d.add(Fail, checkConsole, fmt.Sprintf("cannot read %s: %s", d.consoleNames(), d.scrub(err)),
			"check LANEGATE_PGBOUNCER_URL, that PgBouncer listens there, and that its login is in stats_users")
		return
	}
	d.reading, d.read = r, true
	consoles := "1 console"
	if r.Consoles != 1 {
		consoles = fmt.Sprintf("%d consoles", r.Consoles)
	}
	if names := d.consoleNames(); names != "" {
		consoles += " (" + names + ")"
	}
	d.add(OK, checkConsole, fmt.Sprintf("read %s: pool %s, pool_mode %s, query_wait_timeout %s, max_client_conn %d",
		consoles, poolName(r.Pool), d.mode(), seconds(r.Settings.QueryWaitTimeout), r.Settings.MaxClientConn), "")
	sized, err := d.cfg.WithPool(config.Pool{Size: r.Pool.Size, QueryWaitTimeout: r.Settings.QueryWaitTimeout, Name: poolName(r.Pool)})
	if err != nil {
		// Sized from this pool the configuration is invalid; the checks
		// below go on with it as written.
		d.add(Fail, checkConfig, err.Error(), "change the variables named, or PgBouncer's pool")
		return
	}
	d.cfg = sized
}

// consoleNames lists the consoles as the findings show them.
func (d *run) consoleNames() string {
	names := make([]string, max(len(d.opts.Config.PgBouncer.URLs), len(d.opts.Consoles)))
	for i := range names {
		names[i] = d.consoleName(i)
	}
	return strings.Join(names, ", ")
}

// consoleName is the i-th console's redacted URL, or its position when
// the caller gave no names: a raw URL may carry a password.
func (d *run) consoleName(i int) string {
	if i < len(d.opts.Consoles) {
		return d.opts.Consoles[i]
	}
	return fmt.Sprintf("console %d", i+1)
}

// scrub returns err's text without any console's URL or password, which a
// driver's error may quote.
func (d *run) scrub(err error) string {
	s := err.Error()
	for i, raw := range d.opts.Config.PgBouncer.URLs {
		if raw != "" {
			s = strings.ReplaceAll(s, raw, d.consoleName(i))
		}
		for _, secret := range urlSecrets(raw) {
			s = strings.ReplaceAll(s, secret, "xxxxx")
		}
	}
	return s
}

// urlSecrets returns the passwords a postgres:// URL carries, in its
// userinfo or its query.
func urlSecrets(raw string) []string {
	u, err := url.Parse(raw)
	if err != nil {
		return nil
	}
	var out []string
	if p, ok := u.User.Password(); ok && p != "" {
		out = append(out, p, url.PathEscape(p), url.QueryEscape(p))
	}
	for _, p := range u.Query()["password"] {
		if p != "" {
			out = append(out, p, url.QueryEscape(p))
		}
	}
	return out
}

// poolName names a pool as database/user, or the database alone when the
// figures are summed over its users.
func poolName(p poolwatch.Pool) string {
	if p.User == "" {
		return p.Database + " (all users)"
	}
	return p.Database + "/" + p.User
}

// seconds formats a PgBouncer duration as pgbouncer.ini writes it.
func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}
