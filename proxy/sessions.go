package proxy

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lanegate/lanegate/session"
)

// stripLanegateHeaders removes every header a client sent under lanegate's
// prefix, compared without case and with "_" taken as "-": WSGI servers
// turn both into the same HTTP_X_LANEGATE_... variable, so a client's
// X_Lanegate_Identity would otherwise reach Django as the real thing.
func stripLanegateHeaders(h http.Header) {
	for k := range h {
		if hasLanegatePrefix(k) {
			delete(h, k)
		}
	}
}

// stripLanegateTrailers removes lanegate's headers announced or set as
// response trailers.
func stripLanegateTrailers(h http.Header) {
	for k := range h {
		if hasLanegatePrefix(strings.TrimPrefix(k, http.TrailerPrefix)) {
			delete(h, k)
		}
	}
	if tr, ok := h["Trailer"]; ok {
		kept := tr[:0]
		for _, v := range tr {
			if !hasLanegatePrefix(strings.TrimSpace(v)) {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			delete(h, "Trailer")
		} else {
			h["Trailer"] = kept
		}
	}
}

func hasLanegatePrefix(k string) bool {
	const p = session.HeaderPrefix
	if len(k) < len(p) {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := k[i]
		if c == '_' {
			c = '-'
		}
		if c|0x20 != p[i]|0x20 {
			return false
		}
	}
	return true
}

// needsLogin reports whether r is a GET or HEAD to a login-required path
// that carries no session cookie at all, so Django would only redirect it
// to the login page. A request with a cookie, even a stale one, goes to
// Django, which alone knows whether it is still good.
func (h *Handler) needsLogin(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if !h.loginRequired.Classify(r.Method, r.URL.Path).Bypass {
		return false
	}
	return !hasCookie(r.Header, h.sessionCookie)
}

// hasCookie reports whether a request's Cookie headers name the cookie.
func hasCookie(h http.Header, name string) bool {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			if k, _, ok := strings.Cut(strings.TrimSpace(part), "="); ok && k == name {
				return true
			}
		}
	}
	return false
}

// redirectToLogin answers as Django's redirect_to_login would: 302 to the
// login URL with the original path and query in next.
func (h *Handler) redirectToLogin(w http.ResponseWriter, r *http.Request) {
	sep := "?"
	if strings.Contains(h.loginURL, "?") {
		sep = "&"
	}
	loc := h.loginURL + sep + "next=" + url.QueryEscape(r.URL.RequestURI())
	hd := w.Header()
	hd.Set("Location", loc)
	// The answer depends on the cookie: a shared cache must not hand it
	// to a logged-in user.
	hd.Set("Cache-Control", "private, no-store")
	hd.Set("Vary", "Cookie")
	w.WriteHeader(http.StatusFound)
}

// SessionSource is what the metrics and status endpoints read from the
// session cache.
type SessionSource interface {
	Stats() session.Stats
	Health() session.Health
	Len(ctx context.Context) (int, error)
}

// storeLenTimeout bounds the store size lookup of a scrape or /status, so
// a slow Redis cannot stall them.
const storeLenTimeout = 250 * time.Millisecond

// ObserveStore records a session store call; Metrics is the cache's
// session.Observer.
func (m *Metrics) ObserveStore(op string, d time.Duration, err error) {
	if m == nil || m.storeSeconds == nil {
		return
	}
	m.storeSeconds.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.storeErrors.WithLabelValues(op).Inc()
	}
}

func (m *Metrics) loginRedirect() {
	if m != nil {
		m.loginRedirects.Add(1)
	}
}

var (
	descSessionLookups = prometheus.NewDesc("lanegate_session_lookups_total",
		"Requests by what the session cache made of them: hit (forwarded with an identity), miss (cookie without entry), no_cookie, coalesced (waited for a concurrent grant), skipped (store failing).", []string{"result"}, nil)
	descSessionGrants = prometheus.NewDesc("lanegate_session_grants_total",
		"Grants from Django by outcome: stored or rejected.", []string{"result"}, nil)
	descSessionRevocations = prometheus.NewDesc("lanegate_session_revocations_total",
		"Sessions revoked (applied) and revocation headers refused (rejected).", []string{"result"}, nil)
	descSessionDegraded = prometheus.NewDesc("lanegate_session_store_degraded",
		"1 while the session store is skipped after a failure: requests go to Django without identity.", nil, nil)
	descSessionEntries = prometheus.NewDesc("lanegate_session_store_entries",
		"Entries and tombstones in the session store (for Redis: keys in its database); absent when the store does not answer.", nil, nil)
)

// sessionCollector exports the session cache's counters at scrape time.
type sessionCollector struct{ src SessionSource }

func (c sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessionLookups, descSessionGrants, descSessionRevocations, descSessionDegraded, descSessionEntries} {
		ch <- d
	}
}

func (c sessionCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	counter := func(d *prometheus.Desc, v uint64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), label)
	}
	counter(descSessionLookups, s.Hits, "hit")
	counter(descSessionLookups, s.Misses, "miss")
	counter(descSessionLookups, s.NoCookie, "no_cookie")
	counter(descSessionLookups, s.Coalesced, "coalesced")
	counter(descSessionLookups, s.Skipped, "skipped")
	counter(descSessionGrants, s.Grants, "stored")
	counter(descSessionGrants, s.GrantsRejected, "rejected")
	counter(descSessionRevocations, s.Revocations, "applied")
	counter(descSessionRevocations, s.RevokesRejected, "rejected")
	degraded := 0.0
	if c.src.Health().Degraded {
		degraded = 1
	}
	ch <- prometheus.MustNewConstMetric(descSessionDegraded, prometheus.GaugeValue, degraded)
	ctx, cancel := context.WithTimeout(context.Background(), storeLenTimeout)
	defer cancel()
	if n, err := c.src.Len(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(descSessionEntries, prometheus.GaugeValue, float64(n))
	}
}

// RegisterSessions adds the session cache's metrics: lookups, grants,
// revocations, store health, and store latency and errors by operation.
func (m *Metrics) RegisterSessions(reg prometheus.Registerer, src SessionSource) error {
	m.storeSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lanegate_session_store_seconds",
		Help:    "Latency of session store calls by operation (get, put, revoke).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
	}, []string{"op"})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lanegate_session_store_errors_total",
		Help: "Failed session store calls by operation; each sends requests to Django without identity.",
	}, []string{"op"})
	for _, c := range []prometheus.Collector{m.storeSeconds, m.storeErrors, sessionCollector{src}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
