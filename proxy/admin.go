package proxy

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
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/waitroom"
)

// AdminOptions configure the admin listener's handler.
type AdminOptions struct {
	// Token, when set, is required as a bearer token on every endpoint but
	// the health probes. Configuration insists on one when the admin
	// listener is reachable from other hosts.
	Token string
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// ReadyTimeout bounds the upstream probe of /readyz.
	ReadyTimeout time.Duration
	// Sessions, when set, is the session cache whose store /status and
	// /readyz report on.
	Sessions SessionSource
	// SessionStore names the store kind for /status: memory or redis.
	SessionStore string
}

// Admin serves lanegate's operational endpoints: metrics, health, status
// and the run-time admission switch.
type Admin struct {
	h     *Handler
	src   Snapshotter
	opts  AdminOptions
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
func (a *Admin) SetReload(r ReloadStatus) { a.reload.Store(&r) }

// SetDraining makes /readyz fail from now on, for a shutdown: the load
// balancer should stop sending before the listener closes.
func (a *Admin) SetDraining() { a.draining.Store(true) }

// NewAdmin returns the admin handler for h, reading state from src.
func NewAdmin(h *Handler, src Snapshotter, opts AdminOptions, log *zap.Logger) *Admin {
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = time.Second
	}
	if log == nil {
		log = zap.NewNop()
	}
	a := &Admin{h: h, src: src, opts: opts, log: log, mux: http.NewServeMux()}
	a.ready = a.dialUpstream
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.Handle("GET /metrics", a.auth(promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{})))
	a.mux.Handle("GET /status", a.auth(http.HandlerFunc(a.status)))
	a.mux.Handle("GET /admission", a.auth(http.HandlerFunc(a.getMode)))
	a.mux.Handle("PUT /admission", a.auth(http.HandlerFunc(a.putMode)))
	return a
}

// ServeHTTP serves the admin endpoints.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// auth demands the bearer token when one is configured. Without one the
// listener is on loopback (configuration insists), and the Host must be a
// loopback name too: otherwise a web page could reach it through DNS
// rebinding and switch admission off.
func (a *Admin) auth(next http.Handler) http.Handler {
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
		got := sha256.Sum256([]byte(token))
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lanegate admin"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// readyz reports whether the upstream accepts connections, so a load
// balancer stops sending traffic to a lanegate whose app is down.
func (a *Admin) readyz(w http.ResponseWriter, r *http.Request) {
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
	if a.opts.Sessions != nil && a.opts.Sessions.Health().Degraded {
		io.WriteString(w, "ok (degraded: session store failing)\n")
		return
	}
	io.WriteString(w, "ok\n")
}

func (a *Admin) dialUpstream(ctx context.Context) error {
	u := a.h.upstream
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return err
	}
	return c.Close()
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
	Mode        string                `json:"mode"`
	Budget      int                   `json:"budget"`
	InFlight    int                   `json:"in_flight"`
	Bypassed    uint64                `json:"bypassed"`
	Lanes       map[string]LaneStatus `json:"lanes"`
	Anonymous   AnonStatus            `json:"anonymous"`
	WaitingRoom *waitroom.Status      `json:"waiting_room,omitempty"`
	Sessions    *SessionStatus        `json:"sessions,omitempty"`
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

func (a *Admin) status(w http.ResponseWriter, r *http.Request) {
	snap := a.src.Snapshot()
	st := Status{
		Mode:        string(a.h.Mode()),
		Budget:      snap.Budget,
		InFlight:    snap.InFlight,
		Lanes:       make(map[string]LaneStatus, len(snap.Lanes)),
		Anonymous:   AnonStatus{Max: snap.AnonMax, InFlight: snap.AnonInFlight, Queued: snap.AnonQueued},
		WaitingRoom: a.h.room.Status(snap.Room),
		LastReload:  a.reload.Load(),
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
	if a.h.metrics != nil {
		st.Bypassed = a.h.metrics.bypassed.Load()
	}
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
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

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

func (a *Admin) getMode(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintln(w, a.h.Mode())
}

// putMode switches the admission mode at run time: body enforce, shadow
// or off.
func (a *Admin) putMode(w http.ResponseWriter, r *http.Request) {
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
	old := a.h.Mode()
	a.h.SetMode(m)
	a.log.Warn("admission mode changed", zap.String("from", string(old)), zap.String("to", string(m)), zap.String("by", r.RemoteAddr))
	fmt.Fprintln(w, m)
}
