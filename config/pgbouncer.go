package config

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Names of the pool watcher's variables.
const (
	varPgBouncerURL     = prefix + "PGBOUNCER_URL"
	varPgBouncerPoll    = prefix + "PGBOUNCER_POLL"
	varPgBouncerTimeout = prefix + "PGBOUNCER_TIMEOUT"
	varPgBouncerStale   = prefix + "PGBOUNCER_STALE"
	varPgBouncerFollow  = prefix + "PGBOUNCER_FOLLOW"
)

// Pool is what PgBouncer's console says of the app's pool, for sizing
// lanegate from it (see WithPool).
type Pool struct {
	// Size is the pool's server connections (pool_size), summed over
	// every PgBouncer watched.
	Size int
	// QueryWaitTimeout is PgBouncer's query_wait_timeout; 0 means none.
	QueryWaitTimeout time.Duration
	// Name says which pool, for the configuration's provenance comments:
	// "lanegate_storm/storm at 127.0.0.1:6432".
	Name string
}

// Watched reports whether the configuration names a PgBouncer to watch.
func (c Config) Watched() bool { return len(c.PgBouncer.URLs) > 0 }

// WithPool returns c sized from the pool PgBouncer reports, when c watches
// a PgBouncer: LANEGATE_DB_POOL_SIZE, unless set (or LANEGATE_BUDGET is),
// becomes the pool's size, and LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT,
// unless set, PgBouncer's query_wait_timeout, so neither is typed twice
// and neither goes stale when PgBouncer's configuration changes. Every
// value derived from them follows, and the result is validated again: a
// pool of zero connections, or one too small for a lane value the
// operator set, is an error naming where it came from, and c comes back
// unchanged with it.
func (c Config) WithPool(p Pool) (Config, error) {
	if !c.Watched() {
		return c, nil
	}
	orig := c
	from := map[string]string{}
	if _, set := c.origin[varPoolSize]; !set && c.Admission.Budget == nil {
		c.Admission.DBPoolSize = p.Size
		from[varPoolSize] = "derived from PgBouncer: pool_size of " + p.Name
	}
	if c.Admission.PgBouncerQueryWaitTimeout == nil {
		qw := p.QueryWaitTimeout
		c.Admission.PgBouncerQueryWaitTimeout = &qw
		from[varQueryWait] = "derived from PgBouncer: query_wait_timeout of " + p.Name
	}
	sized := c
	sized.fromPool = from
	errs, warnings := sized.validate(nil)
	if len(errs) > 0 {
		return orig, fmt.Errorf("sizing from PgBouncer's pool %s (pool_size %d): %w", p.Name, p.Size, errors.Join(errs...))
	}
	sized.warnings = warnings
	return sized, nil
}

// pgBouncer checks the pool watcher's variables.
func (v *validator) pgBouncer() {
	pb := v.c.PgBouncer
	if !v.skip(varPgBouncerURL) {
		for i, raw := range pb.URLs {
			if err := consoleURL(raw); err != nil {
				// A password may be anywhere in it (user info, a
				// password= parameter) or the value may be a secret
				// pasted in the wrong variable: show only where it
				// points, when it points anywhere.
				shown := ""
				// An "@" the parser did not take as the end of the
				// user info means the host it found may be a password.
				if u, perr := url.Parse(raw); perr == nil && u.Scheme != "" && u.Host != "" &&
					(u.User != nil || !strings.Contains(raw, "@")) {
					shown = " (" + u.Scheme + "://" + u.Host + ")"
				}
				v.report(varPgBouncerURL, fmt.Sprintf("%s: URL %d%s: %v", varPgBouncerURL, i+1, shown, err))
				break
			}
		}
	}
	v.positive(varPgBouncerPoll, pb.Poll)
	v.positive(varPgBouncerTimeout, pb.Timeout)
	if !v.skip(varPgBouncerStale) && !v.skip(varPgBouncerPoll) && pb.Poll > 0 && pb.Stale < pb.Poll {
		v.relate([]string{varPgBouncerStale, varPgBouncerPoll},
			"%s=%s is shorter than %s=%s: one late reading would already drop the watcher",
			varPgBouncerStale, pb.Stale, varPgBouncerPoll, pb.Poll)
	}
}

// consoleURL checks that raw locates PgBouncer's admin console.
func consoleURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL (want postgres://user:password@host:6432/pgbouncer)")
	}
	switch {
	case u.Scheme != "postgres" && u.Scheme != "postgresql":
		return errors.New("scheme must be postgres or postgresql")
	case u.Hostname() == "":
		return errors.New("has no host")
	case u.Path != "/pgbouncer":
		return errors.New("database must be pgbouncer, the admin console (…/pgbouncer)")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q is not a port number", port)
		}
	}
	return nil
}
