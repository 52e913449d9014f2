// Package admin is lanegate's operators' listener: health and readiness
// probes, /status and a live page of it, Prometheus metrics and the
// run-time admission switch.
// It reads the data plane's state and changes only its mode; it is never on
// a request's path.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/upstream"
	"github.com/lanegate/lanegate/waitroom"
)

// Plane is what the admin server needs of the data plane.
type Plane interface {
	// Mode is the admission mode in force; SetMode switches it.
	Mode() admission.Mode
	SetMode(admission.Mode)
	// RoomStatus is the waiting room's part of /status, nil when it is
	// off.
	RoomStatus(admission.RoomStats) *waitroom.Status
	// Bypassed is how many requests skipped admission.
	Bypassed() uint64
}

// Snapshotter is what /status reads from the admission controller.
type Snapshotter interface {
	Snapshot() admission.Snapshot
}

// Sessions is what /status and /readyz read from the session cache.
type Sessions interface {
	Stats() session.Stats
	Health() session.Health
	Len(ctx context.Context) (int, error)
}

// Options configure the admin server.
type Options struct {
	// Token, when set, is required as a bearer token on every endpoint but
	// the health probes. Configuration insists on one when the admin
	// listener is reachable from other hosts.
	Token string
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// Upstream is the app server /readyz probes; nil probes nothing, and
	// /readyz answers from the draining flag and the session store alone.
	Upstream *url.URL
	// ReadyTimeout bounds the upstream probe of /readyz.
	ReadyTimeout time.Duration
	// Sessions, when set, is the session cache whose store /status and
	// /readyz report on.
	Sessions Sessions
	// SessionStore names the store kind for /status: memory or redis.
	SessionStore string
	// Pool, when set, is the pool watcher /status and /readyz report on.
	Pool Pool
	// Fleet, when set, is fleet mode's coordinator, for /status and
	// /readyz.
	Fleet Fleet
}

// Server serves lanegate's operational endpoints: metrics, health, status
// and the run-time admission switch.
type Server struct {
	plane Plane
	src   Snapshotter
	opts  Options
	log   *zap.Logger
	mux   *http.ServeMux
	ready func(ctx context.Context) error

	draining atomic.Bool
	reload   atomic.Pointer[ReloadStatus]
}

// ReloadStatus is the outcome of the last configuration reload, shown on
// /status: a refused reload leaves the old configuration running, which an
// operator must be able to see without reading the log.
type ReloadStatus struct {
	At time.Time `json:"at"`
	OK bool      `json:"ok"`
	// Error says why the reload was refused. Configuration errors name
	// variables and never a secret's value.
	Error string `json:"error,omitempty"`
}

// SetReload records the outcome of a configuration reload for /status.
func (a *Server) SetReload(r ReloadStatus) { a.reload.Store(&r) }

// SetDraining makes /readyz fail from now on, for a shutdown: the load
// balancer should stop sending before the listener closes.
func (a *Server) SetDraining() { a.draining.Store(true) }

// New returns the admin server for plane, reading the controller's state
// from src.
func New(plane Plane, src Snapshotter, opts Options, log *zap.Logger) *Server {
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = time.Second
	}
	if log == nil {
		log = zap.NewNop()
	}
	a := &Server{plane: plane, src: src, opts: opts, log: log, mux: http.NewServeMux()}
	a.ready = a.dialUpstream
	if opts.Upstream == nil {
		a.ready = func(context.Context) error { return nil }
	}
	// The live page, at the root only: every other unknown path is 404.
	a.mux.Handle("GET /{$}", a.browserAuth(http.HandlerFunc(a.live)))
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.Handle("GET /metrics", a.auth(promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{})))
	a.mux.Handle("GET /status", a.browserAuth(http.HandlerFunc(a.status)))
	a.mux.Handle("GET /admission", a.auth(http.HandlerFunc(a.getMode)))
	a.mux.Handle("PUT /admission", a.auth(http.HandlerFunc(a.putMode)))
	return a
}

// ServeHTTP serves the admin endpoints.
func (a *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// auth demands the bearer token when one is configured. Without one the
// listener is on loopback (configuration insists), and the Host must be a
// loopback name too: otherwise a web page could reach it through DNS
// rebinding and switch admission off.
func (a *Server) auth(next http.Handler) http.Handler { return a.guard(next, false) }

// browserAuth is auth for what the live page reads, GET / and GET
// /status: there the token may also be the password of HTTP Basic
// credentials (any user name). A browser cannot send a bearer token when
// it opens a page, but it asks for Basic credentials itself, keeps them in
// memory for the session and sends them again on the page's polls, so the
// token never goes into a URL, a bookmark or the page's script. Both are
// reads; the endpoints that change or export anything keep to the bearer
// token.
func (a *Server) browserAuth(next http.Handler) http.Handler { return a.guard(next, true) }

func (a *Server) guard(next http.Handler, basic bool) http.Handler {
	if a.opts.Token == "" {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !loopbackHost(r.Host) {
				http.Error(w, "forbidden: admin endpoints answer only to a loopback Host", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	// Comparing digests keeps the comparison constant-time whatever the
	// lengths, so the token's length does not leak either.
	want := sha256.Sum256([]byte(a.opts.Token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		ok := strings.EqualFold(scheme, "Bearer")
		if basic && strings.EqualFold(scheme, "Basic") {
			_, token, ok = r.BasicAuth()
		}
		got := sha256.Sum256([]byte(token))
		if !ok || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lanegate admin"`)
			if basic {
				w.Header().Add("WWW-Authenticate", `Basic realm="lanegate admin", charset="UTF-8"`)
			}
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// readyz reports whether the upstream accepts connections, so a load
// balancer stops sending traffic to a lanegate whose app is down.
func (a *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.opts.ReadyTimeout)
	defer cancel()
	if a.draining.Load() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	if err := a.ready(ctx); err != nil {
		// The error names the upstream's address; it goes to the log, not
		// to an unauthenticated client.
		a.log.Warn("readiness: upstream unreachable", zap.Error(err))
		http.Error(w, "upstream unreachable", http.StatusServiceUnavailable)
		return
	}
	// A failing session store costs the app some reads, not correctness:
	// requests go to Django without identity. Taking lanegate out of the
	// load balancer for it would turn a slowdown into an outage.
	// Nor is a lost PgBouncer console: lanegate falls back to its static
	// budget, which is how it ran before it had a watcher.
	var degraded []string
	if a.opts.Sessions != nil && a.opts.Sessions.Health().Degraded {
		degraded = append(degraded, "session store failing")
	}
	if a.opts.Pool != nil && a.opts.Pool.Status().Degraded() {
		degraded = append(degraded, "PgBouncer's console unreadable, static budget in force")
	}
	// Out of the fleet, this replica admits under the fleet's limits
	// divided by the last known members: less, not nothing.
	if a.opts.Fleet != nil && a.opts.Fleet.Status().Degraded() {
		degraded = append(degraded, "fleet's Redis unreachable, fallback share in force")
	}
	if len(degraded) > 0 {
		io.WriteString(w, "ok (degraded: "+strings.Join(degraded, "; ")+")\n")
		return
	}
	io.WriteString(w, "ok\n")
}

func (a *Server) dialUpstream(ctx context.Context) error {
	return upstream.Probe(ctx, a.opts.Upstream)
}

// LaneStatus is one lane in the /status document.
type LaneStatus struct {
	Reserved     int               `json:"reserved"`
	Max          int               `json:"max"`
	Queue        int               `json:"queue"`
	QueueTimeout string            `json:"queue_timeout"`
	InFlight     int               `json:"in_flight"`
	Queued       int               `json:"queued"`
	ServiceTime  string            `json:"service_time"`
	Admitted     uint64            `json:"admitted"`
	Shed         uint64            `json:"shed"`
	Decisions    map[string]uint64 `json:"decisions"`
}

// Status is the /status document.
type Status struct {
	Mode string `json:"mode"`
	// Budget is the budget in force: StaticBudget, or less while the
	// pool watcher gives way to the pool's other clients.
	Budget       int                   `json:"budget"`
	StaticBudget int                   `json:"static_budget"`
	InFlight     int                   `json:"in_flight"`
	Bypassed     uint64                `json:"bypassed"`
	Lanes        map[string]LaneStatus `json:"lanes"`
	Anonymous    AnonStatus            `json:"anonymous"`
	WaitingRoom  *waitroom.Status      `json:"waiting_room,omitempty"`
	Sessions     *SessionStatus        `json:"sessions,omitempty"`
	// Pool is absent without LANEGATE_PGBOUNCER_URL.
	Pool *PoolStatus `json:"pool,omitempty"`
	// Fleet is absent unless LANEGATE_FLEET=redis.
	Fleet *FleetStatus `json:"fleet,omitempty"`
	// LastReload is absent until the first SIGHUP.
	LastReload *ReloadStatus `json:"last_reload,omitempty"`
}

// AnonStatus is the state of core requests without a validated session.
type AnonStatus struct {
	Max      int `json:"max"`
	InFlight int `json:"in_flight"`
	Queued   int `json:"queued"`
}

// SessionStatus is the session cache in the /status document. It never
// shows a secret, a session key or a store address.
type SessionStatus struct {
	Store       string        `json:"store"`
	Healthy     bool          `json:"healthy"`
	LastError   string        `json:"last_error,omitempty"`
	LastErrorAt *time.Time    `json:"last_error_at,omitempty"`
	Stats       session.Stats `json:"stats"`
	// Entries is the store's size; absent when the store did not answer.
	Entries *int `json:"entries,omitempty"`
}

func (a *Server) status(w http.ResponseWriter, r *http.Request) {
	snap := a.src.Snapshot()
	st := Status{
		Mode:         string(a.plane.Mode()),
		Budget:       snap.Budget,
		StaticBudget: snap.StaticBudget,
		InFlight:     snap.InFlight,
		Lanes:        make(map[string]LaneStatus, len(snap.Lanes)),
		Anonymous:    AnonStatus{Max: snap.AnonMax, InFlight: snap.AnonInFlight, Queued: snap.AnonQueued},
		WaitingRoom:  a.plane.RoomStatus(snap.Room),
		LastReload:   a.reload.Load(),
	}
	if src := a.opts.Sessions; src != nil {
		h := src.Health()
		ss := &SessionStatus{Store: a.opts.SessionStore, Healthy: !h.Degraded, LastError: h.LastError, Stats: src.Stats()}
		if !h.LastErrorAt.IsZero() {
			ss.LastErrorAt = &h.LastErrorAt
		}
		ctx, cancel := context.WithTimeout(r.Context(), storeLenTimeout)
		if n, err := src.Len(ctx); err == nil {
			ss.Entries = &n
		}
		cancel()
		st.Sessions = ss
	}
	if a.opts.Pool != nil {
		st.Pool = poolStatus(a.opts.Pool.Status())
	}
	if a.opts.Fleet != nil {
		st.Fleet = fleetStatus(r.Context(), a.opts.Fleet)
	}
	st.Bypassed = a.plane.Bypassed()
	for _, ln := range snap.Lanes {
		ls := LaneStatus{
			Reserved:     ln.Reserved,
			Max:          ln.Max,
			Queue:        ln.Queue,
			QueueTimeout: ln.QueueTimeout.String(),
			InFlight:     ln.InFlight,
			Queued:       ln.Queued,
			ServiceTime:  ln.ServiceTime.String(),
			Decisions:    map[string]uint64{},
		}
		for d, n := range ln.Decisions {
			dec := admission.Decision(d)
			if n == 0 {
				continue
			}
			ls.Decisions[dec.String()] = n
			switch {
			case dec == admission.Admitted:
				ls.Admitted += n
			case dec.Shed():
				ls.Shed += n
			}
		}
		st.Lanes[ln.Lane.String()] = ls
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	// A browser holding Basic credentials sends them with any request
	// to this origin, a cross-site page's too: such a page may not load
	// the document as a script or style, nor embed it.
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// storeLenTimeout bounds the store size lookup of /status, so a slow Redis
// cannot stall it.
const storeLenTimeout = 250 * time.Millisecond

// loopbackHost reports whether a Host header names this machine's loopback.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (a *Server) getMode(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintln(w, a.plane.Mode())
}

// putMode switches the admission mode at run time: body enforce, shadow
// or off.
func (a *Server) putMode(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	m, err := admission.ParseMode(strings.TrimSpace(string(body)))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	old := a.plane.Mode()
	a.plane.SetMode(m)
	a.log.Warn("admission mode changed", zap.String("from", string(old)), zap.String("to", string(m)), zap.String("by", r.RemoteAddr))
	fmt.Fprintln(w, m)
}
