package proxy

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/waitroom"
)

// Snapshotter is what the metrics and status endpoints read from the
// admission controller.
type Snapshotter interface {
	Snapshot() admission.Snapshot
}

// Labels that are not admission decisions.
const (
	laneBypass       = "bypass"
	decisionBypass   = "bypass"
	decisionTooLarge = "body_too_large"
	// decisionBodyError is a request whose small body, read before
	// admission, broke off or stalled.
	decisionBodyError  = "body_error"
	decisionClientGone = "client_gone"
	// decisionLoginRedirect is a request sent to the login page at the
	// edge because it had no session cookie.
	decisionLoginRedirect = "login_redirect"
	// decisionWaitingPage is a login page answered with the waiting room.
	decisionWaitingPage = "waiting_page"
	// statusClientClosed is nginx's code for "the client went away before
	// we answered"; it is logged, never sent.
	statusClientClosed = 499
)

// numLabels is the admission lanes plus bypass.
const numLabels = 4

func laneLabel(c Class) string {
	if c.Bypass {
		return laneBypass
	}
	return c.Lane.String()
}

func labelIndex(c Class) int {
	if c.Bypass {
		return numLabels - 1
	}
	return int(c.Lane)
}

// Metrics holds lanegate's Prometheus metrics. Counts and gauges of the
// controller are read from its Snapshot when scraped, so the request path
// pays only for the two latency histograms. A nil *Metrics records
// nothing.
type Metrics struct {
	queueWait [numLabels]prometheus.Observer
	upstream  [numLabels]prometheus.Observer
	upErrors  *prometheus.CounterVec
	bypassed  atomic.Uint64
	tooLarge  [numLabels]atomic.Uint64
	badBody   [numLabels]atomic.Uint64

	loginRedirects atomic.Uint64
	clientBodies   atomic.Uint64 // request bodies that failed or stalled
	// room is the waiting room's HTTP counters; nil when it is off.
	room *waitroom.Room
	// Session store metrics; nil until RegisterSessions.
	storeSeconds *prometheus.HistogramVec
	storeErrors  *prometheus.CounterVec
}

// NewMetrics registers lanegate's metrics on reg. src supplies the
// controller's state at scrape time.
func NewMetrics(reg prometheus.Registerer, src Snapshotter) (*Metrics, error) {
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	qw := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lanegate_queue_wait_seconds",
		Help:    "Time admitted requests spent queued for a slot, by lane.",
		Buckets: buckets,
	}, []string{"lane"})
	up := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lanegate_upstream_seconds",
		Help:    "Time from forwarding a request to relaying the last byte of its response, by lane.",
		Buckets: buckets,
	}, []string{"lane"})
	m := &Metrics{
		upErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lanegate_upstream_errors_total",
			Help: "Requests the upstream failed, by kind: refused, timeout and failed before the response headers, body_timeout and body_failed in the response body, body_too_large.",
		}, []string{"kind"}),
	}
	labels := [numLabels]string{}
	for _, l := range admission.Lanes() {
		labels[l] = l.String()
	}
	labels[numLabels-1] = laneBypass
	for i, name := range labels {
		m.queueWait[i] = qw.WithLabelValues(name)
		m.upstream[i] = up.WithLabelValues(name)
	}
	for _, c := range []prometheus.Collector{qw, up, m.upErrors, &snapshotCollector{src: src, m: m, labels: labels}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("proxy: register metrics: %w", err)
		}
	}
	return m, nil
}

// SetRoom has the waiting room's counters exported; before it, or with a
// nil room, there are none.
func (m *Metrics) SetRoom(room *waitroom.Room) {
	if m != nil {
		m.room = room
	}
}

func (m *Metrics) observeQueueWait(c Class, d time.Duration) {
	if m != nil {
		m.queueWait[labelIndex(c)].Observe(d.Seconds())
	}
}

func (m *Metrics) observeUpstream(c Class, d time.Duration) {
	if m != nil {
		m.upstream[labelIndex(c)].Observe(d.Seconds())
	}
}

func (m *Metrics) upstreamError(kind string) {
	if m != nil {
		m.upErrors.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) clientBodyError() {
	if m != nil {
		m.clientBodies.Add(1)
	}
}

func (m *Metrics) bypass() {
	if m != nil {
		m.bypassed.Add(1)
	}
}

func (m *Metrics) bodyError(c Class) {
	if m != nil {
		m.badBody[labelIndex(c)].Add(1)
	}
}

func (m *Metrics) bodyTooLarge(c Class) {
	if m != nil {
		m.tooLarge[labelIndex(c)].Add(1)
	}
}

var (
	descInFlight   = prometheus.NewDesc("lanegate_lane_in_flight", "Requests of the lane holding a slot.", []string{"lane"}, nil)
	descQueued     = prometheus.NewDesc("lanegate_lane_queued", "Requests of the lane waiting for a slot.", []string{"lane"}, nil)
	descReserved   = prometheus.NewDesc("lanegate_lane_reserved", "Slots reserved for the lane.", []string{"lane"}, nil)
	descMax        = prometheus.NewDesc("lanegate_lane_max", "Most slots the lane may hold.", []string{"lane"}, nil)
	descService    = prometheus.NewDesc("lanegate_lane_service_seconds", "Moving average of how long the lane's requests hold a slot.", []string{"lane"}, nil)
	descRequests   = prometheus.NewDesc("lanegate_requests_total", "Requests by lane and admission decision.", []string{"lane", "decision"}, nil)
	descBudget     = prometheus.NewDesc("lanegate_budget", "Requests allowed in flight to the upstream across all lanes.", nil, nil)
	descTotal      = prometheus.NewDesc("lanegate_in_flight", "Requests holding a slot, all lanes.", nil, nil)
	descClientBody = prometheus.NewDesc("lanegate_client_body_errors_total", "Requests whose body the client broke off, malformed or stalled past LANEGATE_BODY_READ_TIMEOUT (answered 400 or 408).", nil, nil)
	descAnon       = prometheus.NewDesc("lanegate_anonymous", "Core requests without a validated session: in flight, queued, and their cap (0: none).", []string{"state"}, nil)

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
	m      *Metrics
	labels [numLabels]string
}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInFlight, descQueued, descReserved, descMax, descService, descRequests, descBudget, descTotal, descAnon, descClientBody,
		descRoomSize, descRoomWait, descRoomRate, descRoomTickets, descRoomPages, descRoomRedir} {
		ch <- d
	}
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, float64(s.Budget))
	ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(s.InFlight))
	ch <- prometheus.MustNewConstMetric(descClientBody, prometheus.CounterValue, float64(c.m.clientBodies.Load()))
	ch <- prometheus.MustNewConstMetric(descAnon, prometheus.GaugeValue, float64(s.AnonInFlight), "in_flight")
	ch <- prometheus.MustNewConstMetric(descAnon, prometheus.GaugeValue, float64(s.AnonQueued), "queued")
	ch <- prometheus.MustNewConstMetric(descAnon, prometheus.GaugeValue, float64(s.AnonMax), "max")
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
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.bypassed.Load()), laneBypass, decisionBypass)
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.loginRedirects.Load()), admission.Core.String(), decisionLoginRedirect)
	for i, name := range c.labels {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.tooLarge[i].Load()), name, decisionTooLarge)
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.m.badBody[i].Load()), name, decisionBodyError)
	}
}

// statusCode is the status to log: what was written, 499 when the client
// left before anything was.
func statusCode(written, override int) int {
	switch {
	case override != 0:
		return override
	case written != 0:
		return written
	}
	return http.StatusOK
}
