package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
)

// maxQueue bounds a lane's queue. Waiting requests cost memory and a
// goroutine each, and a queue this long could never drain within any
// sensible queue timeout.
const maxQueue = 65_535

// maxQueued bounds all lanes' queues together: the admission controller
// counts waiting requests in 16 bits.
const maxQueued = 65_535

// maxBufferBody bounds LANEGATE_BUFFER_BODY_BYTES: buffered bodies are
// held in memory while queued, and a large one belongs on the streaming
// path.
const maxBufferBody = 16 << 20

// validator collects every problem with a Config.
type validator struct {
	c Config
	r resolution
	// bad holds variables already reported (or unparsable). Checks that
	// combine variables skip any that depend on a bad one, so one mistake
	// is reported once, where it is, and not again through every value
	// derived from it.
	bad      map[string]bool
	errs     []error
	warnings []string
}

// validate returns every problem with c, and warnings that do not stop it.
// failed lists variables that could not be parsed, whose values are
// therefore meaningless.
func (c Config) validate(failed map[string]bool) ([]error, []string) {
	v := &validator{c: c, r: c.resolve(), bad: make(map[string]bool)}
	maps.Copy(v.bad, failed)
	v.server()
	v.upstream()
	v.responseBuffers()
	v.admin()
	v.admission()
	v.routes()
	v.session()
	v.pgBouncer()
	v.fleet()
	v.tickets()
	v.log()
	return v.errs, v.warnings
}

func (v *validator) tickets() {
	s := v.c.Admission.TicketSecret
	if s == "" || v.skip(varTicketSecret) {
		return
	}
	if _, err := session.ParseKeyring(s); err != nil {
		v.report(varTicketSecret, fmt.Sprintf("%s: %v", varTicketSecret, err))
	}
}

// skip reports whether name's own checks should be skipped because it
// failed to parse.
func (v *validator) skip(name string) bool { return v.bad[name] }

// fail reports a problem with name's own value, shown as describe shows
// it, and marks name bad.
func (v *validator) fail(name, format string, args ...any) {
	v.report(name, v.r.describe(name, false)+": "+fmt.Sprintf(format, args...))
}

// failQuoted is fail for string values, which are quoted so that empty
// and space-padded values are visible.
func (v *validator) failQuoted(name, value, format string, args ...any) {
	v.report(name, fmt.Sprintf("%s=%q: ", name, value)+fmt.Sprintf(format, args...))
}

// report records msg as a problem with name and marks name bad.
func (v *validator) report(name, msg string) {
	v.bad[name] = true
	v.errs = append(v.errs, errors.New(msg))
}

// relate reports a problem between variables unless one of them, or
// anything they were derived from, is already reported. It returns whether
// the problem was reported.
func (v *validator) relate(names []string, format string, args ...any) bool {
	for _, n := range names {
		for _, d := range v.r.vars[n].deps {
			if v.bad[d] {
				return false
			}
		}
	}
	v.errs = append(v.errs, fmt.Errorf(format, args...))
	return true
}

// positive checks durations that must be above zero.
func (v *validator) positive(name string, d time.Duration) {
	if !v.skip(name) && d <= 0 {
		v.fail(name, "must be positive")
	}
}

func (v *validator) server() {
	s := v.c.Server
	v.address(varListen, s.Listen)
	if (s.TLSCertFile == "") != (s.TLSKeyFile == "") {
		set, unset := varTLSCert, varTLSKey
		if s.TLSCertFile == "" {
			set, unset = unset, set
		}
		v.report(unset, fmt.Sprintf("%s is empty but %s is set: set both to serve HTTPS, or neither", unset, set))
	}
	v.readable(varTLSCert, s.TLSCertFile)
	v.readable(varTLSKey, s.TLSKeyFile)
	v.positive(varReadHeader, s.ReadHeaderTimeout)
	v.positive(varIdle, s.IdleTimeout)
	v.positive(varShutdown, s.ShutdownTimeout)
	if !v.skip(varMaxConns) && s.MaxConns < 1 {
		v.fail(varMaxConns, "must be at least 1")
	}
	if !v.skip(varMaxHeaderBytes) && s.MaxHeaderBytes < 1 {
		v.fail(varMaxHeaderBytes, "must be at least 1")
	}
	if !v.skip(varBodyRead) && s.BodyReadTimeout < 0 {
		v.fail(varBodyRead, "must not be negative (0 disables it)")
	}
	if !v.skip(varBufferBodyBytes) && (s.BufferBodyBytes < 0 || s.BufferBodyBytes > maxBufferBody) {
		v.fail(varBufferBodyBytes, "must be between 0 (off) and %d: every request being buffered may hold this much memory", maxBufferBody)
	}
	if !v.skip(varBufferBodyTotal) && s.BufferBodyTotalBytes < 0 {
		v.fail(varBufferBodyTotal, "must not be negative (0 means no bound)")
	}
	if !v.skip(varBufferBodyTotal) && !v.skip(varBufferBodyBytes) &&
		s.BufferBodyTotalBytes > 0 && s.BufferBodyTotalBytes < s.BufferBodyBytes {
		v.warnings = append(v.warnings, fmt.Sprintf(
			"%s is less than %s: a body that large is never read whole before admission, and streams",
			v.r.describe(varBufferBodyTotal, false), v.r.describe(varBufferBodyBytes, false)))
	}
	if !v.skip(varMaxBodyBytes) && s.MaxBodyBytes < 0 {
		v.fail(varMaxBodyBytes, "must not be negative (0 means unlimited)")
	}
	if !v.skip(varClientSend) && s.ClientSendTimeout < 0 {
		v.fail(varClientSend, "must not be negative (0 disables it)")
	}
}

// maxResponseBuffer bounds LANEGATE_RESPONSE_BUFFER_BYTES: past it a
// response is a download, better streamed than held in memory.
const maxResponseBuffer = 64 << 20

// responseBuffers checks the response buffer's sizes.
func (v *validator) responseBuffers() {
	u := v.c.Upstream
	if !v.skip(varRespBuffer) && (u.ResponseBufferBytes < 0 || u.ResponseBufferBytes > maxResponseBuffer) {
		v.fail(varRespBuffer, "must be between 0 (off) and %d (64 MiB)", maxResponseBuffer)
		return
	}
	if v.skip(varRespBufferTotal) || v.skip(varRespBuffer) || u.ResponseBufferBytes == 0 {
		return
	}
	if u.ResponseBufferTotalBytes < u.ResponseBufferBytes {
		v.fail(varRespBufferTotal, "must be at least %s (%d), or no response of that size could ever be buffered", varRespBuffer, u.ResponseBufferBytes)
	}
}

// address checks a host:port listen address.
func (v *validator) address(name, addr string) {
	if v.skip(name) {
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.failQuoted(name, addr, "not a host:port address (want e.g. :8080 or 127.0.0.1:8080)")
		return
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		v.failQuoted(name, addr, "port %q is not a number from 0 to 65535", port)
	}
}

// readable checks that a configured file can be opened now, rather than
// failing at the first TLS handshake.
func (v *validator) readable(name, path string) {
	if path == "" || v.skip(name) {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		v.failQuoted(name, path, "cannot read the file: %v", err)
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		v.failQuoted(name, path, "is a directory, not a file")
	}
}

func (v *validator) upstream() {
	u := v.c.Upstream
	switch {
	case v.skip(varUpstream):
	case u.URL == nil:
		v.report(varUpstream, varUpstream+" must be set")
	case u.URL.Scheme != "http" && u.URL.Scheme != "https":
		v.failQuoted(varUpstream, u.URL.String(), "scheme must be http or https (want e.g. http://127.0.0.1:8000)")
	case u.URL.Host == "":
		v.failQuoted(varUpstream, u.URL.String(), "has no host (want e.g. http://127.0.0.1:8000)")
	case u.URL.Path != "" && u.URL.Path != "/":
		v.failQuoted(varUpstream, u.URL.String(), "must not have a path: lanegate forwards each request's own path unchanged")
	case u.URL.RawQuery != "" || u.URL.Fragment != "":
		v.failQuoted(varUpstream, u.URL.String(), "must not have a query or fragment")
	}
	v.positive(varDial, u.DialTimeout)
	v.positive(varResponseHeader, u.ResponseHeaderTimeout)
	v.positive(varUpstreamIdle, u.IdleTimeout)
	v.positive(varUpstreamStall, u.StallTimeout)
	if !v.skip(varTimeoutHold) && u.TimeoutHold < 0 {
		v.fail(varTimeoutHold, "must not be negative (0 frees the slot with the 504)")
	}
}

func (v *validator) admin() {
	a := v.c.Admin
	v.address(varAdminListen, a.Listen)
	if v.skip(varAdminListen) || v.skip(varListen) {
		return
	}
	// Port 0 asks the kernel for a free port, so two ":0" listeners differ.
	if _, port, _ := net.SplitHostPort(a.Listen); a.Listen == v.c.Server.Listen && port != "0" {
		v.failQuoted(varAdminListen, a.Listen, "is also %s: the admin server needs an address of its own", varListen)
		return
	}
	host, _, _ := net.SplitHostPort(a.Listen)
	if a.Token == "" && !isLoopback(host) {
		v.report(varAdminToken, fmt.Sprintf("%s is required because %s=%q is not a loopback address", varAdminToken, varAdminListen, a.Listen))
	}
}

// isLoopback reports whether a listen host accepts only local connections.
// An empty host, like 0.0.0.0, listens on every interface.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.Unmap().IsLoopback()
}

func (v *validator) admission() {
	a := v.c.Admission
	if !v.skip(varPoolSize) && (a.DBPoolSize < 1 || a.DBPoolSize > maxPoolSize) {
		v.fail(varPoolSize, "must be between 1 and %d", maxPoolSize)
	}
	if !v.skip(varHeadroom) && (a.PoolHeadroom < 0 || a.PoolHeadroom > 99) {
		v.fail(varHeadroom, "must be a percentage from 0 to 99")
	}
	if a.Budget != nil && !v.skip(varBudget) && (*a.Budget < 1 || *a.Budget > maxPoolSize) {
		v.fail(varBudget, "must be between 1 and %d", maxPoolSize)
	}
	if a.UpstreamCPUs != nil && !v.skip(varCPUs) && *a.UpstreamCPUs < 1 {
		v.fail(varCPUs, "must be at least 1")
	}
	v.lanes()
	v.rates()
	v.queryWait()
}

func (v *validator) lanes() {
	lim := v.r.limits
	for _, l := range admission.Lanes() {
		ll := lim.Lane[l]
		for _, x := range []struct {
			what string
			n    int
		}{{laneVarReserved, ll.Reserved}, {laneVarMax, ll.Max}, {laneVarQueue, ll.Queue}} {
			name := laneVar(l, x.what)
			switch {
			case v.skip(name):
			case x.n < 0:
				v.fail(name, "must not be negative")
			case x.what == laneVarMax && x.n == 0 && l != admission.Export && v.r.vars[name].source == fromSet:
				// A login or core lane that may never hold a slot
				// refuses every request: a login held 30 s and told to
				// retry in 1 s, for ever. (The export lane may be
				// closed: its requests are refused at once.) A derived
				// 0 comes from a bad budget, reported there.
				v.fail(name, "must be at least 1: with 0, every %s request would be refused", l)
			case x.what == laneVarQueue && x.n > maxQueue:
				v.fail(name, "must be at most %d", maxQueue)
			}
		}
		v.positive(laneVar(l, laneVarQueueTimeout), lim.Lane[l].QueueTimeout)
	}

	budget := v.r.describe(varBudget, false)
	overBudget := false
	for _, l := range admission.Lanes() {
		ll := lim.Lane[l]
		reserved, maxName := laneVar(l, laneVarReserved), laneVar(l, laneVarMax)
		if ll.Max > lim.Budget {
			v.relate([]string{maxName, varBudget}, "%s exceeds %s", v.r.describe(maxName, false), budget)
		}
		switch {
		case ll.Reserved > lim.Budget:
			overBudget = v.relate([]string{reserved, varBudget}, "%s exceeds %s", v.r.describe(reserved, false), budget) || overBudget
		case ll.Reserved > ll.Max:
			v.relate([]string{reserved, maxName}, "%s exceeds %s", v.r.describe(reserved, false), v.r.describe(maxName, false))
		}
	}
	if overBudget {
		return // the sum is over too, for the reason already given
	}
	var names, terms []string
	sum := 0
	for _, l := range admission.Lanes() {
		name := laneVar(l, laneVarReserved)
		names = append(names, name)
		terms = append(terms, v.r.describe(name, true))
		sum += max(lim.Lane[l].Reserved, 0)
	}
	if sum > lim.Budget {
		v.relate(append(names, varBudget), "reservations exceed the budget: %s = %d, more than %s",
			strings.Join(terms, " + "), sum, budget)
	}

	var qnames, qterms []string
	queued := 0
	for _, l := range admission.Lanes() {
		name := laneVar(l, laneVarQueue)
		qnames = append(qnames, name)
		qterms = append(qterms, v.r.describe(name, true))
		queued += max(lim.Lane[l].Queue, 0)
	}
	if queued > maxQueued {
		v.relate(qnames, "queues sum to more than lanegate can hold: %s = %d, more than %d",
			strings.Join(qterms, " + "), queued, maxQueued)
	}
}

func (v *validator) rates() {
	a := v.c.Admission
	buckets := []struct {
		rate, burst string
		r           float64
		b           int
	}{
		{varLoginRate, varLoginBurst, a.LoginRate, a.LoginBurst},
		{varClientRate, varClientBurst, a.LoginPerClientRate, a.LoginPerClientBurst},
	}
	for _, bk := range buckets {
		if !v.skip(bk.rate) && bk.r < 0 {
			v.fail(bk.rate, "must not be negative (0 disables it)")
		}
		if bk.r > 0 && bk.b < 1 {
			v.relate([]string{bk.rate, bk.burst}, "%s: must be at least 1 because %s is not 0",
				v.r.describe(bk.burst, false), v.r.describe(bk.rate, false))
		}
	}
	if !v.skip(varClientsMax) && a.LoginClientsMax < 0 {
		v.fail(varClientsMax, "must not be negative")
	} else if a.LoginClientsMax < 1 && a.LoginPerClientRate > 0 {
		v.relate([]string{varClientsMax, varClientRate}, "%s: must be at least 1 because %s is not 0",
			v.r.describe(varClientsMax, false), v.r.describe(varClientRate, false))
	}
}

// queryWait warns about lane queue timeouts not under PgBouncer's
// query_wait_timeout, but only when the budget exceeds the pool: lanegate's
// own queues hold no database connection, so a request waiting in them
// cannot hit PgBouncer's timeout; only an admitted request that then waits
// in PgBouncer for a connection can, and with the budget within the pool
// none does.
func (v *validator) queryWait() {
	qw := v.c.Admission.PgBouncerQueryWaitTimeout
	if qw == nil || v.skip(varQueryWait) {
		return
	}
	if *qw < 0 {
		v.fail(varQueryWait, "must not be negative (0 means PgBouncer has no query_wait_timeout)")
		return
	}
	pool := v.c.Admission.DBPoolSize
	if *qw == 0 || v.r.limits.Budget <= pool {
		return
	}
	for _, l := range admission.Lanes() {
		name := laneVar(l, laneVarQueueTimeout)
		if v.r.limits.Lane[l].QueueTimeout >= *qw {
			v.warnings = append(v.warnings, fmt.Sprintf(
				"%s is not shorter than %s while %s exceeds %s=%d: requests admitted beyond the pool wait in PgBouncer and may fail there",
				v.r.describe(name, false), v.r.describe(varQueryWait, false), v.r.describe(varBudget, true), varPoolSize, pool))
		}
	}
}

// routes checks path rules the way the proxy's classifier will, so that a
// bad rule is reported with its variable before anything starts.
func (v *validator) routes() {
	r := v.c.Routes
	for _, p := range []struct {
		name  string
		paths []string
	}{{varLoginPaths, r.LoginPaths}, {varExportPaths, r.ExportPaths}, {varBypassPaths, r.BypassPaths}, {varLoginRequired, r.LoginRequiredPaths}} {
		if v.skip(p.name) {
			continue
		}
		var problems []string
		for _, rule := range p.paths {
			switch {
			case !strings.HasPrefix(rule, "/"):
				problems = append(problems, fmt.Sprintf(`%q does not start with "/"`, rule))
			case strings.Contains(rule, "?"):
				problems = append(problems, fmt.Sprintf(`%q has a "?": rules match the path, not the query`, rule))
			case cleanRule(rule) != rule:
				problems = append(problems, fmt.Sprintf("%q is not clean: request paths are cleaned before matching, write %q", rule, cleanRule(rule)))
			}
		}
		if len(problems) > 0 {
			v.failQuoted(p.name, strings.Join(p.paths, ","), "%s", strings.Join(problems, "; "))
		}
	}
}

// cleanRule cleans a rooted path as request paths are cleaned before
// matching, keeping a trailing slash, which marks a directory rule.
func cleanRule(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

func (v *validator) session() {
	s := v.c.Session
	r := v.c.Routes
	if !v.skip(varLoginURL) {
		switch u, err := url.Parse(r.LoginURL); {
		case err != nil:
			v.failQuoted(varLoginURL, r.LoginURL, "not a URL: %v", err)
		case u.IsAbs() && (u.Scheme != "http" && u.Scheme != "https" || u.Host == ""):
			v.failQuoted(varLoginURL, r.LoginURL, "want a path such as /accounts/login/ or an http(s) URL with a host")
		case !u.IsAbs() && !strings.HasPrefix(r.LoginURL, "/"):
			v.failQuoted(varLoginURL, r.LoginURL, `a path must start with "/"`)
		case strings.HasPrefix(r.LoginURL, "//"):
			v.failQuoted(varLoginURL, r.LoginURL, `must not start with "//" (a scheme-relative URL to another host)`)
		}
	}
	if !v.skip(varSessionStore) && !slices.Contains([]string{StoreOff, StoreMemory, StoreRedis}, s.Store) {
		v.failQuoted(varSessionStore, s.Store, "want off, memory or redis")
		return
	}
	if !v.skip(varSessionCookie) && !validCookieName(s.Cookie) {
		v.failQuoted(varSessionCookie, s.Cookie, "not a cookie name")
	}
	v.positive(varSessionTTL, s.TTL)
	if !v.skip(varCoalesceWait) && s.CoalesceWait < 0 {
		v.fail(varCoalesceWait, "must not be negative (0 disables waiting)")
	}
	if a := v.c.Admission.AnonMax; a != nil && !v.skip(varAnonMax) {
		if *a < 0 {
			v.fail(varAnonMax, "must not be negative (0 means no cap)")
		} else if max := v.r.limits.Lane[admission.Core].Max; *a > max {
			name := laneVar(admission.Core, laneVarMax)
			v.relate([]string{varAnonMax, name}, "%s exceeds %s", v.r.describe(varAnonMax, false), v.r.describe(name, false))
		}
	}
	if s.Store == StoreOff || v.skip(varSessionStore) {
		return
	}
	if !v.skip(varIdentitySecret) {
		if s.IdentitySecret == "" {
			v.report(varIdentitySecret, fmt.Sprintf("%s is required because %s=%s", varIdentitySecret, varSessionStore, s.Store))
		} else if _, err := session.ParseKeyring(s.IdentitySecret); err != nil {
			// The message names the secret by position, never its value.
			v.report(varIdentitySecret, fmt.Sprintf("%s: %v", varIdentitySecret, err))
		}
	}
	switch s.Store {
	case StoreMemory:
		if !v.skip(varSessionMax) && s.MaxEntries < 1 {
			v.fail(varSessionMax, "must be at least 1")
		}
	case StoreRedis:
		v.positive(varRedisTimeout, s.RedisTimeout)
		if !v.skip(varRedisPool) && s.RedisPoolSize < 1 {
			v.fail(varRedisPool, "must be at least 1")
		}
		if !v.skip(varRedisURL) && s.RedisURL == "" {
			v.report(varRedisURL, fmt.Sprintf("%s is required because %s=redis", varRedisURL, varSessionStore))
		}
	}
}

// validCookieName reports whether name is an RFC 6265 token.
func validCookieName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

func (v *validator) log() {
	l := v.c.Log
	if !v.skip(varLogFormat) && !slices.Contains([]string{"json", "console"}, l.Format) {
		v.failQuoted(varLogFormat, l.Format, "want json or console")
	}
	if !v.skip(varLogLevel) && !slices.Contains([]string{"debug", "info", "warn", "error"}, l.Level) {
		v.failQuoted(varLogLevel, l.Level, "want debug, info, warn or error")
	}
}
