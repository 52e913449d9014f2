package deploy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/fleet"
	"github.com/lanegate/lanegate/metrics"
	"github.com/lanegate/lanegate/poolwatch"
	"github.com/lanegate/lanegate/proxy"
	"github.com/lanegate/lanegate/session"
)

// lanegate is the data plane and admin server of one lanegate, built in
// process the way cmd/lanegate builds them with every optional part on:
// the waiting room, response buffers, the client listener's limits, the
// session cache, the pool watcher and fleet mode. The last three read
// fixed states here, which is all their metrics need.
type lanegate struct {
	admin *admin.Server
	srv   *httptest.Server
}

type sessionsFake struct{}

func (sessionsFake) Stats() session.Stats                 { return session.Stats{} }
func (sessionsFake) Health() session.Health               { return session.Health{} }
func (sessionsFake) Len(ctx context.Context) (int, error) { return 0, nil }

// poolFake has a reading, so that the pool's figures are exported (before
// the first reading only lanegate_pool_watcher_up and the read counts are).
type poolFake struct{}

func (poolFake) Status() poolwatch.Status {
	return poolwatch.Status{State: poolwatch.StateOK, At: time.Now(), Age: time.Second}
}

type fleetFake struct{}

func (fleetFake) Status() fleet.Status { return fleet.Status{State: fleet.StateOK, Members: 2} }

func (fleetFake) LineStats() fleet.LineStats { return fleet.LineStats{} }

// startLanegate builds a lanegate whose upstream is upstream, which need
// not answer.
func startLanegate(t *testing.T, upstream *url.URL) *lanegate {
	t.Helper()
	cfg := load(t, "", nil)
	ctrl, err := admission.New(cfg.Limits())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg, ctrl)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterSessions(reg, sessionsFake{}); err != nil {
		t.Fatal(err)
	}
	// Labelled counters and histograms have a series once something is
	// counted: one failed store call and one upstream error.
	m.ObserveStore("get", time.Millisecond, errors.New("store down"))
	m.UpstreamError("refused")
	if err := m.RegisterPool(reg, poolFake{}); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterFleet(reg, fleetFake{}); err != nil {
		t.Fatal(err)
	}
	tickets, err := session.ParseKeyring("t1:" + strings.Repeat("x", session.MinSecretLen))
	if err != nil {
		t.Fatal(err)
	}
	h, err := proxy.New(ctrl, proxy.Options{
		Upstream:                 upstream,
		WaitingRoom:              true,
		Tickets:                  tickets,
		ResponseBufferBytes:      cfg.Upstream.ResponseBufferBytes,
		ResponseBufferTotalBytes: cfg.Upstream.ResponseBufferTotalBytes,
	}, nil, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := proxy.NewListener(ln, proxy.ListenerOptions{MaxConns: cfg.Server.MaxConns})
	t.Cleanup(func() { client.Close() })
	if err := client.Register(reg); err != nil {
		t.Fatal(err)
	}
	lg := &lanegate{admin: admin.New(h, ctrl, admin.Options{Gatherer: reg, Upstream: upstream, ReadyTimeout: time.Second}, nil)}
	lg.srv = httptest.NewServer(lg.admin)
	t.Cleanup(lg.srv.Close)
	return lg
}

// get answers a GET of path on the admin server, without a token (as the
// kubelet, HAProxy and Docker probe it), with its status and body.
func (lg *lanegate) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(lg.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return resp.StatusCode, b.String()
}

// exported scrapes /metrics and returns each metric family's name and
// type, from its # TYPE line.
func (lg *lanegate) exported(t *testing.T) map[string]string {
	t.Helper()
	code, body := lg.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	out := make(map[string]string)
	for line := range strings.SplitSeq(body, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = f[3]
		}
	}
	return out
}

// upstreams returns the URL of an app server that accepts connections and
// of one that refuses them.
func upstreams(t *testing.T) (up, down *url.URL) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone.Close()
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}, &url.URL{Scheme: "http", Host: gone.Addr().String()}
}

// probes says what the admin server answers on a path, for the probes
// of the deployment files: ready is 200 with the app up and not draining;
// appDown and draining are whether it fails (503) with the app refusing
// connections, and once lanegate is told to stop.
type probe struct {
	ready, appDown, draining, exists bool
}

// probeOf finds out how the admin server's path behaves as a probe.
func probeOf(t *testing.T, path string) probe {
	t.Helper()
	up, down := upstreams(t)
	var p probe
	lg := startLanegate(t, up)
	code, _ := lg.get(t, path)
	p.exists = code != http.StatusNotFound && code != http.StatusMethodNotAllowed
	p.ready = code == http.StatusOK
	lg.admin.SetDraining()
	code, _ = lg.get(t, path)
	p.draining = code == http.StatusServiceUnavailable
	lg = startLanegate(t, down)
	code, _ = lg.get(t, path)
	p.appDown = code == http.StatusServiceUnavailable
	return p
}

// checkReadiness fails unless path is a readiness probe: it fails while
// lanegate drains, so that a balancer stops sending before the listener
// closes, and while the app refuses connections.
func checkReadiness(t *testing.T, who, path string) {
	t.Helper()
	p := probeOf(t, path)
	if !p.exists || !p.ready || !p.draining || !p.appDown {
		t.Errorf("%s probes readiness at %q: served %v, 200 when ready %v, 503 while draining %v, 503 with the app down %v; want all true (GET /readyz)",
			who, path, p.exists, p.ready, p.draining, p.appDown)
	}
}

// checkLiveness fails unless path is a liveness probe: it answers 200
// while the process serves, whatever the app does, so that an app outage
// does not restart lanegate.
func checkLiveness(t *testing.T, who, path string) {
	t.Helper()
	p := probeOf(t, path)
	if !p.exists || !p.ready || p.appDown {
		t.Errorf("%s probes liveness at %q: served %v, 200 %v, fails with the app down %v; want a path that answers 200 whatever the app does (GET /healthz)",
			who, path, p.exists, p.ready, p.appDown)
	}
}

func TestProbeKinds(t *testing.T) {
	// The checks must tell the endpoints apart, or they would pass any
	// deployment file.
	if p := probeOf(t, "/healthz"); !p.exists || !p.ready || p.appDown || p.draining {
		t.Errorf("/healthz: %+v", p)
	}
	if p := probeOf(t, "/readyz"); !p.exists || !p.ready || !p.appDown || !p.draining {
		t.Errorf("/readyz: %+v", p)
	}
	if p := probeOf(t, "/no-such-probe"); p.exists || p.ready {
		t.Errorf("/no-such-probe: %+v", p)
	}
}
