package doctor

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ConnMaxAge is Django's CONN_MAX_AGE as the operator states it. The zero
// value is "not stated".
type ConnMaxAge struct {
	// Stated is false when the operator said nothing: the doctor then
	// looks for persistent connections in SHOW CLIENTS.
	Stated bool
	// Seconds is the value; 0 closes each request's connection at its end.
	Seconds int
	// Unlimited is CONN_MAX_AGE = None: connections are never closed.
	Unlimited bool
}

// ParseConnMaxAge reads CONN_MAX_AGE as settings.py writes it: a number
// of seconds, or None.
func ParseConnMaxAge(s string) (ConnMaxAge, error) {
	if strings.EqualFold(s, "none") {
		return ConnMaxAge{Stated: true, Unlimited: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return ConnMaxAge{}, fmt.Errorf("CONN_MAX_AGE %q: want seconds (0 or more) or None", s)
	}
	return ConnMaxAge{Stated: true, Seconds: n}, nil
}

// Persistent reports whether Django keeps a connection open between
// requests.
func (c ConnMaxAge) Persistent() bool { return c.Unlimited || c.Seconds > 0 }

// String writes the value as settings.py does.
func (c ConnMaxAge) String() string {
	switch {
	case !c.Stated:
		return "unstated"
	case c.Unlimited:
		return "None"
	}
	return strconv.Itoa(c.Seconds)
}

// mode is the app's pool's pool_mode: its own when the console names one
// (a database may override it), else PgBouncer's default.
func (d *run) mode() string {
	if m := d.reading.Pool.Mode; m != "" {
		return m
	}
	return d.reading.Settings.PoolMode
}

// poolMode checks that PgBouncer's pooling fits how Django uses its
// connections.
func (d *run) poolMode(ctx context.Context) {
	if !d.read {
		d.notChecked(checkPoolMode)
		return
	}
	pool := poolName(d.reading.Pool)
	switch mode := d.mode(); mode {
	case "statement":
		d.add(Fail, checkPoolMode, fmt.Sprintf("pool_mode statement for %s: Django runs transactions (atomic blocks, logins, ATOMIC_REQUESTS), which statement pooling refuses", pool),
			"set pool_mode = transaction (with Django's DISABLE_SERVER_SIDE_CURSORS = True) or session in pgbouncer.ini")
	case "transaction":
		d.add(Warn, checkPoolMode, fmt.Sprintf("pool_mode transaction for %s: Django's server-side cursors (QuerySet.iterator()) break when a transaction's statements reach different server connections; Django's settings cannot be checked from here", pool),
			"make sure DISABLE_SERVER_SIDE_CURSORS = True in Django's DATABASES entry for this database")
	case "session":
		d.sessionMode(ctx, pool)
	default:
		d.add(Warn, checkPoolMode, fmt.Sprintf("pool_mode %q for %s: not one the doctor knows (session, transaction, statement)", mode, pool), "")
	}
}

// persistentAfter is how long a client of the app's pool must have been
// connected to count as persistent. With CONN_MAX_AGE = 0 Django connects
// at a request's first query and disconnects at its end, so its clients
// live about as long as a request, far less than this.
const persistentAfter = 60 * time.Second

// sessionMode checks session pooling against Django's CONN_MAX_AGE: a
// persistent connection keeps its server connection while its gunicorn
// thread idles, so the pool is held by threads rather than by requests
// and lanegate's budget no longer bounds it.
func (d *run) sessionMode(ctx context.Context, pool string) {
	const fix = "set CONN_MAX_AGE = 0 in Django's DATABASES, or pool_mode = transaction (with DISABLE_SERVER_SIDE_CURSORS = True)"
	if c := d.opts.ConnMaxAge; c.Stated {
		if c.Persistent() {
			d.add(Fail, checkPoolMode, fmt.Sprintf("pool_mode session for %s with CONN_MAX_AGE = %s (as stated): each gunicorn thread keeps a server connection between requests, so idle threads hold the pool and the budget no longer bounds it", pool, c), fix)
			return
		}
		d.add(OK, checkPoolMode, fmt.Sprintf("pool_mode session for %s with CONN_MAX_AGE = 0 (as stated): Django gives its connection back at the end of each request", pool), "")
		return
	}
	cl, err := d.appClients(ctx)
	switch {
	case err != nil:
		d.add(Warn, checkPoolMode, fmt.Sprintf("pool_mode session for %s; whether Django keeps connections (CONN_MAX_AGE > 0) is unknown: %v", pool, err),
			"state Django's CONN_MAX_AGE: lanegate doctor --conn-max-age N")
	case cl.total == 0:
		d.add(Warn, checkPoolMode, fmt.Sprintf("pool_mode session for %s; no client of it is connected now, so whether Django keeps connections (CONN_MAX_AGE > 0) cannot be seen", pool),
			"state Django's CONN_MAX_AGE (lanegate doctor --conn-max-age N), or run the doctor while the app serves")
	case cl.old > 0:
		d.add(Warn, checkPoolMode, fmt.Sprintf("pool_mode session for %s; %d of its %d clients connected over %s ago (the oldest %s): persistent connections, as Django keeps with CONN_MAX_AGE > 0 (or a worker's, or requests that long), each holding a server connection while idle",
			pool, cl.old, cl.total, persistentAfter, cl.oldest.Round(time.Second)),
			"if they are Django's, "+fix+"; if not, keep LANEGATE_POOL_HEADROOM above them; --conn-max-age states Django's")
	default:
		d.add(OK, checkPoolMode, fmt.Sprintf("pool_mode session for %s; none of its %d clients connected over %s ago, so Django gives connections back after each request (CONN_MAX_AGE = 0, as it looks)",
			pool, cl.total, persistentAfter), "")
	}
}

// clientAges counts the app pool's clients and the persistent ones.
type clientAges struct {
	total, old int
	oldest     time.Duration
}

// appClients reads SHOW CLIENTS and counts the clients of the app's pool
// connected for longer than persistentAfter.
//
// A client's age is measured against the newest connect_time on its own
// console, not this machine's clock: the doctor's own console login has
// just connected, so the newest time is about PgBouncer's now, in its
// clock and time zone. Were it older, ages would only come out shorter,
// and fewer clients counted persistent.
func (d *run) appClients(ctx context.Context) (clientAges, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	consoles, err := d.opts.Console.Show(ctx, "CLIENTS")
	if err != nil {
		return clientAges{}, errors.New(d.scrub(err))
	}
	p := d.reading.Pool
	var ages clientAges
	for _, rows := range consoles {
		var now time.Time
		times := make([]time.Time, len(rows))
		for i, row := range rows {
			t, err := parseConnectTime(row["connect_time"])
			if err != nil {
				return clientAges{}, fmt.Errorf("SHOW CLIENTS: %w", err)
			}
			times[i] = t
			if t.After(now) {
				now = t
			}
		}
		for i, row := range rows {
			if row["database"] != p.Database || p.User != "" && row["user"] != p.User {
				continue
			}
			ages.total++
			if age := now.Sub(times[i]); age > persistentAfter {
				ages.old++
				ages.oldest = max(ages.oldest, age)
			}
		}
	}
	return ages, nil
}

// parseConnectTime reads SHOW CLIENTS' connect_time, such as
// "2026-12-03 04:00:00 UTC". Times of one console share its zone, and
// only their differences are used, so an abbreviation Go does not know
// (parsed as a zero offset) does no harm.
func parseConnectTime(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02 15:04:05 MST", "2006-01-02 15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("connect_time %q is not a time", s)
}
