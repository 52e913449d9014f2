// Package metrics exports lanegate's Prometheus metrics. Counts and gauges
// of the controller, the waiting room and the session cache are read from
// them when scraped, so the request path pays only for two latency
// histograms and a few atomic counters.
package metrics

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/upstream"
	"github.com/lanegate/lanegate/waitroom"
)

// Snapshotter is what the metrics and status endpoints read from the
// admission controller.
type Snapshotter interface {
	Snapshot() admission.Snapshot
}

// Decisions that are not the admission controller's, as the access log
// and lanegate_requests_total name them.
const (
	// DecisionBypass is a request that skipped admission.
	DecisionBypass = "bypass"
	// DecisionTooLarge is a request refused 413 for its Content-Length.
	DecisionTooLarge = "body_too_large"
	// DecisionBodyError is a request whose small body, read before
	// admission, broke off or stalled.
	DecisionBodyError = "body_error"
	// DecisionClientGone is a request whose client left before it was
	// answered.
	DecisionClientGone = "client_gone"
	// DecisionLoginRedirect is a request sent to the login page at the
	// edge because it had no session cookie.
	DecisionLoginRedirect = "login_redirect"
	// DecisionWaitingPage is a login page answered with the waiting room.
	DecisionWaitingPage = "waiting_page"
)

// Label is the lane label of a request's metrics: one of the admission
// lanes, or Bypass.
type Label uint8

// Bypass labels requests that skipped admission (static files).
const Bypass = Label(numLabels - 1)

// numLabels is the admission lanes plus bypass.
const numLabels = 4

// LaneBypass is Bypass's label value.
const LaneBypass = "bypass"

// LabelOf is the label of a request of lane l, or Bypass when bypass.
func LabelOf(l admission.Lane, bypass bool) Label {
	if bypass {
		return Bypass
	}
	return Label(l)
}

// String is the label value.
func (l Label) String() string {
	if l == Bypass {
		return LaneBypass
	}
	return admission.Lane(l).String()
}

// Registry holds lanegate's Prometheus metrics. Counts and gauges of the
// controller are read from its Snapshot when scraped, so the request path
// pays only for the two latency histograms. A nil *Registry records
// nothing, so a handler built without metrics needs no checks.
type Registry struct {
	queueWait [numLabels]prometheus.Observer
	upstream  [numLabels]prometheus.Observer
	upErrors  *prometheus.CounterVec
	bypassed  atomic.Uint64
	tooLarge  [numLabels]atomic.Uint64
	badBody   [numLabels]atomic.Uint64

	loginRedirects atomic.Uint64
	clientBodies   atomic.Uint64 // request bodies that failed or stalled
	// buffers are the response buffers; nil when responses are not
	// buffered.
	buffers *upstream.Buffers
	// room is the waiting room's HTTP counters; nil when it is off.
	room *waitroom.Room
	// bufferedBodies reads the bytes held by request bodies read before
	// admission; nil until SetBufferedBodies.
	bufferedBodies func() int64
	// Session store metrics; nil until RegisterSessions.
	storeSeconds *prometheus.HistogramVec
	storeErrors  *prometheus.CounterVec
}

// New registers lanegate's metrics on reg, lanegate_build_info among
// them. src supplies the controller's state at scrape time.
func New(reg prometheus.Registerer, src Snapshotter) (*Registry, error) {
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	qw := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lanegate_queue_wait_seconds",
		Help:    "Time admitted requests spent queued for a slot, by lane.",
		Buckets: buckets,
	}, []string{"lane"})
	up := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lanegate_upstream_seconds",
		Help:    "Time from forwarding a request until the app was done with it, by lane: the last byte read from it for a buffered response, else the last byte relayed to the client.",
		Buckets: buckets,
	}, []string{"lane"})
	m := &Registry{
		upErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lanegate_upstream_errors_total",
			Help: "Requests the upstream failed, by kind: refused, timeout and failed before the response headers, body_timeout and body_failed in the response body, body_too_large.",
		}, []string{"kind"}),
	}
	labels := [numLabels]string{}
	for _, l := range admission.Lanes() {
		labels[l] = l.String()
	}
	labels[Bypass] = LaneBypass
	for i, name := range labels {
		m.queueWait[i] = qw.WithLabelValues(name)
		m.upstream[i] = up.WithLabelValues(name)
	}
	for _, c := range []prometheus.Collector{qw, up, m.upErrors, &snapshotCollector{src: src, m: m, labels: labels}, buildInfo(ReadBuild())} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	return m, nil
}

// Bypassed is how many requests skipped admission.
func (m *Registry) Bypassed() uint64 {
	if m == nil {
		return 0
	}
	return m.bypassed.Load()
}

// SetBuffers has the response buffers' use exported.
func (m *Registry) SetBuffers(b *upstream.Buffers) {
	if m != nil {
		m.buffers = b
	}
}

// SetRoom has the waiting room's counters exported; before it, or with a
// nil room, there are none.
func (m *Registry) SetRoom(room *waitroom.Room) {
	if m != nil {
		m.room = room
	}
}

// SetBufferedBodies has the memory of request bodies read before
// admission exported as a gauge, read from src at scrape time so the
// request path pays nothing for it; before it, or with a nil src, there
// is none.
func (m *Registry) SetBufferedBodies(src func() int64) {
	if m != nil {
		m.bufferedBodies = src
	}
}

// ObserveQueueWait records how long an admitted request queued.
func (m *Registry) ObserveQueueWait(l Label, d time.Duration) {
	if m != nil {
		m.queueWait[l].Observe(d.Seconds())
	}
}

// ObserveUpstream records how long a forwarded request took, to the
// last byte relayed.
func (m *Registry) ObserveUpstream(l Label, d time.Duration) {
	if m != nil {
		m.upstream[l].Observe(d.Seconds())
	}
}

// UpstreamError counts a request the upstream failed, by kind.
func (m *Registry) UpstreamError(kind string) {
	if m != nil {
		m.upErrors.WithLabelValues(kind).Inc()
	}
}

// ClientBodyError counts a request body the client broke off, malformed
// or stalled.
func (m *Registry) ClientBodyError() {
	if m != nil {
		m.clientBodies.Add(1)
	}
}

// Bypass counts a request that skipped admission.
func (m *Registry) Bypass() {
	if m != nil {
		m.bypassed.Add(1)
	}
}

// BodyError counts a request whose body, read before admission, failed.
func (m *Registry) BodyError(l Label) {
	if m != nil {
		m.badBody[l].Add(1)
	}
}

// BodyTooLarge counts a request refused for its Content-Length.
func (m *Registry) BodyTooLarge(l Label) {
	if m != nil {
		m.tooLarge[l].Add(1)
	}
}

var (
	descInFlight   = prometheus.NewDesc("lanegate_lane_in_flight", "Requests of the lane holding a slot.", []string{"lane"}, nil)
	descQueued     = prometheus.NewDesc("lanegate_lane_queued", "Requests of the lane waiting for a slot.", []string{"lane"}, nil)
	descReserved   = prometheus.NewDesc("lanegate_lane_reserved", "Slots reserved for the lane.", []string{"lane"}, nil)
	descMax        = prometheus.NewDesc("lanegate_lane_max", "Most slots the lane may hold.", []string{"lane"}, nil)
	descService    = prometheus.NewDesc("lanegate_lane_service_seconds", "Moving average of how long the lane's requests hold a slot.", []string{"lane"}, nil)
	descRequests   = prometheus.NewDesc("lanegate_requests_total", "Requests by lane and admission decision.", []string{"lane", "decision"}, nil)
	descBudget     = prometheus.NewDesc("lanegate_budget", "Requests allowed in flight to the upstream across all lanes now; the same as lanegate_effective_budget, kept for dashboards that read it.", nil, nil)
	descTotal      = prometheus.NewDesc("lanegate_in_flight", "Requests holding a slot, all lanes.", nil, nil)
	descClientBody = prometheus.NewDesc("lanegate_client_body_errors_total", "Requests whose body the client broke off, malformed or stalled past LANEGATE_BODY_READ_TIMEOUT (answered 400 or 408).", nil, nil)
	descAnon       = prometheus.NewDesc("lanegate_anonymous", "Core requests without a validated session: in flight, queued, and their cap (0: none).", []string{"state"}, nil)
	descBuffered   = prometheus.NewDesc("lanegate_buffered_body_bytes", "Bytes of memory held by request bodies read before admission, which LANEGATE_BUFFER_BODY_TOTAL_BYTES bounds; at the bound, further bodies stream.", nil, nil)

	descBufferBytes = prometheus.NewDesc("lanegate_response_buffer_bytes", "Memory held by buffered responses (LANEGATE_RESPONSE_BUFFER_BYTES each, LANEGATE_RESPONSE_BUFFER_TOTAL_BYTES together), in bytes.", nil, nil)
	descBufferOver  = prometheus.NewDesc("lanegate_response_buffer_overflows_total", "Responses relayed unbuffered, holding their slot until the client has read them, by reason: too_large (past LANEGATE_RESPONSE_BUFFER_BYTES) or full (past LANEGATE_RESPONSE_BUFFER_TOTAL_BYTES).", []string{"reason"}, nil)

	descRoomSize    = prometheus.NewDesc("lanegate_waiting_room_logins", "Logins in the waiting room: waiting (held open in line) or away (sent off with a ticket that keeps their place).", []string{"state"}, nil)
	descRoomWait    = prometheus.NewDesc("lanegate_waiting_room_wait_seconds", "Expected wait of a login arriving now, from the line ahead and the login completion rate.", nil, nil)
	descRoomRate    = prometheus.NewDesc("lanegate_waiting_room_completion_rate", "Measured login completions per second (0 until measured).", nil, nil)
	descRoomTickets = prometheus.NewDesc("lanegate_waiting_room_tickets_total", "Tickets by outcome: issued, redeemed (came back and were admitted), accepted (shown with a good signature, expiry and lane), and refused: reused (used twice at once or again), forged, expired, wrong_lane; a refused ticket joins at the back.", []string{"result"}, nil)
	descRoomPages   = prometheus.NewDesc("lanegate_waiting_room_pages_total", "Waiting pages served to people opening the login page.", nil, nil)
	descRoomRedir   = prometheus.NewDesc("lanegate_waiting_room_redirects_total", "Browser login POSTs held a whole hold and answered 307 to post again in their place.", nil, nil)
)

// snapshotCollector exports the controller's state at scrape time.
type snapshotCollector struct {
	src    Snapshotter
	m      *Registry
	labels [numLabels]string
}

// Describe sends every descriptor the collector may export.
func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInFlight, descQueued, descReserved, descMax, descService, descRequests, descBudget, descEffective, descStatic, descTotal, descAnon, descClientBody, descBuffered,
		descBufferBytes, descBufferOver, descRoomSize, descRoomWait, descRoomRate, descRoomTickets, descRoomPages, descRoomRedir} {
		ch <- d
	}
}

// Collect exports the controller's state as of now.
func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, float64(s.Budget))
	ch <- prometheus.MustNewConstMetric(descEffective, prometheus.GaugeValue, float64(s.Budget))
	ch <- prometheus.MustNewConstMetric(descStatic, prometheus.GaugeValue, float64(s.StaticBudget))
	ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(s.InFlight))
	ch <- prometheus.MustNewConstMetric(descClientBody, prometheus.CounterValue, float64(c.m.clientBodies.Load()))
	ch <- prometheus.MustNewConstMetric(descAnon, prometheus.GaugeValue, float64(s.AnonInFlight), "in_flight")
	ch <- prometheus.MustNewConstMetric(descAnon, prometheus.GaugeValue, float64(s.AnonQueued), "queued")
	ch <- prometheus.MustNewConstMetric(descAnon, prometheus.GaugeValue, float64(s.AnonMax), "max")
	if b := c.m.buffers; b != nil {
		ch <- prometheus.MustNewConstMetric(descBufferBytes, prometheus.GaugeValue, float64(b.InUse()))
		large, full := b.Overflows()
		ch <- prometheus.MustNewConstMetric(descBufferOver, prometheus.CounterValue, float64(large), "too_large")
		ch <- prometheus.MustNewConstMetric(descBufferOver, prometheus.CounterValue, float64(full), "full")
	}
	if src := c.m.bufferedBodies; src != nil {
		ch <- prometheus.MustNewConstMetric(descBuffered, prometheus.GaugeValue, float64(src()))
	}
	if rc := c.m.room; rc != nil {
		rs := s.Room
		ch <- prometheus.MustNewConstMetric(descRoomSize, prometheus.GaugeValue, float64(rs.Waiting), "waiting")
		ch <- prometheus.MustNewConstMetric(descRoomSize, prometheus.GaugeValue, float64(rs.Away), "away")
		ch <- prometheus.MustNewConstMetric(descRoomWait, prometheus.GaugeValue, rs.Wait.Seconds())
		ch <- prometheus.MustNewConstMetric(descRoomRate, prometheus.GaugeValue, rs.Rate)
		for result, n := range rc.Tickets(rs) {
			ch <- prometheus.MustNewConstMetric(descRoomTickets, prometheus.CounterValue, float64(n), result)
		}
		ch <- prometheus.MustNewConstMetric(descRoomPages, prometheus.CounterValue, float64(rc.Pages()))
		ch <- prometheus.MustNewConstMetric(descRoomRedir, prometheus.CounterValue, float64(rc.Redirects()))
	}
	for _, ln := range s.Lanes {
		name := ln.Lane.String()
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(ln.InFlight), name)
		ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(ln.Queued), name)
		ch <- prometheus.MustNewConstMetric(descReserved, prometheus.GaugeValue, float64(ln.Reserved), name)
		ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(ln.Max), name)
		ch <- prometheus.MustNewConstMetric(descService, prometheus.GaugeValue, ln.ServiceTime.Seconds(), name)
		for _, d := range admission.Decisions() {
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(ln.Decisions[d]), name, d.String())
		}
	}
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.bypassed.Load()), LaneBypass, DecisionBypass)
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.loginRedirects.Load()), admission.Core.String(), DecisionLoginRedirect)
	for i, name := range c.labels {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.tooLarge[i].Load()), name, DecisionTooLarge)
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.badBody[i].Load()), name, DecisionBodyError)
	}
}

// SessionSource is what the metrics and status endpoints read from the
// session cache.
type SessionSource interface {
	Stats() session.Stats
	Health() session.Health
	Len(ctx context.Context) (int, error)
}

// StoreLenTimeout bounds the store size lookup of a scrape or /status, so
// a slow Redis cannot stall them.
const StoreLenTimeout = 250 * time.Millisecond

// ObserveStore records a session store call; a Registry is the cache's
// session.Observer.
func (m *Registry) ObserveStore(op string, d time.Duration, err error) {
	if m == nil || m.storeSeconds == nil {
		return
	}
	m.storeSeconds.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.storeErrors.WithLabelValues(op).Inc()
	}
}

// LoginRedirect counts a request sent to the login page at the edge.
func (m *Registry) LoginRedirect() {
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

// Describe sends every descriptor the collector may export.
func (c sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessionLookups, descSessionGrants, descSessionRevocations, descSessionDegraded, descSessionEntries} {
		ch <- d
	}
}

// Collect exports the session cache's counters as of now.
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
	ctx, cancel := context.WithTimeout(context.Background(), StoreLenTimeout)
	defer cancel()
	if n, err := c.src.Len(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(descSessionEntries, prometheus.GaugeValue, float64(n))
	}
}

// RegisterSessions adds the session cache's metrics: lookups, grants,
// revocations, store health, and store latency and errors by operation.
func (m *Registry) RegisterSessions(reg prometheus.Registerer, src SessionSource) error {
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
