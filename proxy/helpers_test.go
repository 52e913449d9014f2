package proxy

// Shared helpers for the handler and admin tests. Every name starts with
// "test" so that other test files of the package can use them without
// clashing with their own.

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every wait of the tests, so that a bug shows as a
// failure naming what never happened rather than as a hung test binary.
const testTimeout = 10 * time.Second

// testProxyRules sort test requests: POST /accounts/login/ is a login,
// /reports/ an export, GET /static/ bypasses admission, the rest is core.
var testProxyRules = Rules{
	Login:  []string{"/accounts/login/"},
	Export: []string{"/reports/"},
	Bypass: []string{"/static/"},
}

// testLimits returns limits roomy enough that nothing queues or is shed in a
// test that does not mean it to.
func testLimits() admission.Limits {
	var l admission.Limits
	l.Budget = 64
	for _, ln := range admission.Lanes() {
		l.Lane[ln] = admission.LaneLimits{Max: 64, Queue: 64, QueueTimeout: testTimeout}
	}
	return l
}

// testTightLimits returns a budget of one slot, reserved for the core lane,
// with a core queue of the given length. Login and export may not run.
func testTightLimits(queue int) admission.Limits {
	var l admission.Limits
	l.Budget = 1
	l.Lane[admission.Core] = admission.LaneLimits{Reserved: 1, Max: 1, Queue: queue, QueueTimeout: testTimeout}
	return l
}

// testProxy is a Handler served by an httptest server, with everything a
// test wants to look at.
type testProxy struct {
	Ctrl    *admission.Controller
	Handler *Handler
	Server  *httptest.Server
	// Client talks to Server; its idle connections close with it.
	Client  *http.Client
	Reg     *prometheus.Registry
	Metrics *metrics.Registry
	// Logs holds every log entry the handler wrote.
	Logs *observer.ObservedLogs
}

// testLogger returns a logger writing to the test's log and to an observer.
func testLogger(t testing.TB) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	tl := zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel))
	return zap.New(zapcore.NewTee(tl.Core(), core)), logs
}

// testNewProxy builds a controller under limits and a handler forwarding to
// upstream. opts.Upstream is set from upstream and opts.Rules defaults to
// testProxyRules. The server is closed when the test ends; a test holding
// upstream requests must release them first (a defer does).
func testNewProxy(t testing.TB, upstream string, limits admission.Limits, opts Options) *testProxy {
	t.Helper()
	return testNewProxyWith(t, upstream, limits, opts, nil)
}

// testNewProxyWith is testNewProxy for a handler that asks wrap(ctrl) for
// admission instead of the controller itself, when wrap is not nil.
func testNewProxyWith(t testing.TB, upstream string, limits admission.Limits, opts Options, wrap func(*admission.Controller) Admitter) *testProxy {
	t.Helper()
	p := testNewParts(t, upstream, limits, opts)
	ctrl, opts, reg, m, log, logs := p.Ctrl, p.Opts, p.Reg, p.Metrics, p.Log, p.Logs
	var adm Admitter = ctrl
	if wrap != nil {
		adm = wrap(ctrl)
	}
	h, err := New(adm, opts, log, m)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		h.Close()
	})
	c := srv.Client()
	c.Timeout = 3 * testTimeout // a hung proxy fails the test rather than hangs it
	return &testProxy{Ctrl: ctrl, Handler: h, Server: srv, Client: c, Reg: reg, Metrics: m, Logs: logs}
}

// testParts is what every test handler is built from.
type testParts struct {
	Ctrl    *admission.Controller
	Opts    Options
	Reg     *prometheus.Registry
	Metrics *metrics.Registry
	Log     *zap.Logger
	Logs    *observer.ObservedLogs
}

// testNewParts makes a controller under limits, opts with the upstream
// set and testProxyRules unless opts has rules, metrics on a registry of
// their own, and a logger.
func testNewParts(t testing.TB, upstream string, limits admission.Limits, opts Options) *testParts {
	t.Helper()
	ctrl, err := admission.New(limits)
	if err != nil {
		t.Fatalf("admission.New: got error %v, want nil", err)
	}
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatalf("parse upstream %q: %v", upstream, err)
	}
	opts.Upstream = u
	if opts.Rules.Login == nil && opts.Rules.Export == nil && opts.Rules.Bypass == nil {
		opts.Rules = testProxyRules
	}
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, ctrl)
	if err != nil {
		t.Fatalf("NewMetrics: got error %v, want nil", err)
	}
	log, logs := testLogger(t)
	return &testParts{Ctrl: ctrl, Opts: opts, Reg: reg, Metrics: m, Log: log, Logs: logs}
}

// testUpstream starts an upstream app server closed when the test ends.
func testUpstream(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

// testOK is an upstream handler answering "ok".
var testOK = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, "ok")
})

// testDeadAddr returns a loopback address nothing listens on.
func testDeadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// testArrival is what an upstream saw of one request.
type testArrival struct {
	Method, Host string
	// URI is the request target as the upstream received it, with its
	// escaping and query untouched.
	URI    string
	Path   string
	Header http.Header
	Body   []byte
}

// testGate is an upstream handler that reports every request it receives on
// Arrived, then holds it until Open is called or the request is cancelled,
// and then answers "ok".
type testGate struct {
	Arrived chan testArrival
	hits    atomic.Int64
	open    chan struct{}
	once    sync.Once
}

func testNewGate() *testGate {
	return &testGate{Arrived: make(chan testArrival, 256), open: make(chan struct{})}
}

// Open releases every held request and every later one. It is idempotent,
// so a test may defer it and also call it early.
func (g *testGate) Open() { g.once.Do(func() { close(g.open) }) }

// Hits is how many requests reached the gate.
func (g *testGate) Hits() int64 { return g.hits.Load() }

func (g *testGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.hits.Add(1)
	body, _ := io.ReadAll(r.Body)
	g.Arrived <- testArrival{Method: r.Method, Host: r.Host, URI: r.RequestURI, Path: r.URL.Path, Header: r.Header.Clone(), Body: body}
	select {
	case <-g.open:
		io.WriteString(w, "ok")
	case <-r.Context().Done():
	}
}

// testAwait returns the next request to reach the gate.
func testAwait(t testing.TB, g *testGate) testArrival {
	t.Helper()
	select {
	case a := <-g.Arrived:
		return a
	case <-time.After(testTimeout):
		t.Fatalf("no request reached the upstream within %s", testTimeout)
		return testArrival{}
	}
}

// testWaitFor polls cond until it holds, for states that send no signal
// (controller counters). It fails the test naming what after testTimeout.
func testWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", testTimeout, what)
		}
		<-tick.C
	}
}

// testWaitIdle waits until no request holds a slot of ctrl.
func testWaitIdle(t testing.TB, ctrl *admission.Controller) {
	t.Helper()
	testWaitFor(t, "in-flight count back to 0", func() bool { return ctrl.Snapshot().InFlight == 0 })
}

// testLane returns one lane of ctrl's snapshot.
func testLane(ctrl *admission.Controller, l admission.Lane) admission.LaneSnapshot {
	return ctrl.Snapshot().Lanes[l]
}

// testClientFrom returns a client whose connections come from the loopback
// address ip, so that a test can play several peers.
func testClientFrom(t testing.TB, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// testFirstBytes sends a GET for u and reads the first n bytes of the
// response body, from another goroutine, so that a proxy that holds back
// headers or bytes fails the test instead of hanging it. The caller reads
// or closes the rest of the body.
func testFirstBytes(t testing.TB, c *http.Client, u string, n int) (*http.Response, string) {
	t.Helper()
	type first struct {
		resp *http.Response
		data string
		err  error
	}
	ch := make(chan first, 1)
	go func() {
		resp, err := c.Get(u)
		if err != nil {
			ch <- first{err: err}
			return
		}
		buf := make([]byte, n)
		k, err := io.ReadFull(resp.Body, buf)
		ch <- first{resp, string(buf[:k]), err}
	}()
	select {
	case f := <-ch:
		if f.err != nil {
			if f.resp != nil {
				f.resp.Body.Close()
			}
			t.Fatalf("GET %s, first %d bytes: got %q, %v, want no error", u, n, f.data, f.err)
		}
		t.Cleanup(func() { f.resp.Body.Close() })
		return f.resp, f.data
	case <-time.After(testTimeout):
		t.Fatalf("GET %s: got no headers or fewer than %d bytes within %s, want them before the upstream finishes", u, n, testTimeout)
		return nil, ""
	}
}

// testResult is one response, read in full.
type testResult struct {
	Resp *http.Response
	Body []byte
	Err  error
}

// testDo sends req and reads the whole response.
func testDo(c *http.Client, req *http.Request) testResult {
	resp, err := c.Do(req)
	if err != nil {
		return testResult{Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return testResult{Resp: resp, Body: body, Err: err}
}

// testGo sends req from a goroutine; the result arrives on the channel.
func testGo(c *http.Client, req *http.Request) <-chan testResult {
	ch := make(chan testResult, 1)
	go func() { ch <- testDo(c, req) }()
	return ch
}

// testReceive waits for a result from testGo.
func testReceive(t testing.TB, ch <-chan testResult) testResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(testTimeout):
		t.Fatalf("no response within %s", testTimeout)
		return testResult{}
	}
}

// testRequest builds a request, failing the test on error. hdr may be nil;
// a "Host" entry sets the request's Host.
func testRequest(t testing.TB, method, u string, hdr map[string]string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatalf("NewRequest %s %s: %v", method, u, err)
	}
	for k, v := range hdr {
		if http.CanonicalHeaderKey(k) == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	return req
}

// testFetch sends one request and requires a response.
func testFetch(t testing.TB, c *http.Client, method, u string, hdr map[string]string, body io.Reader) testResult {
	t.Helper()
	res := testDo(c, testRequest(t, method, u, hdr, body))
	if res.Err != nil {
		t.Fatalf("%s %s: got error %v, want a response", method, u, res.Err)
	}
	return res
}

// testStatus fails the test unless res has status want.
func testStatus(t testing.TB, res testResult, want int) {
	t.Helper()
	if res.Err != nil {
		t.Fatalf("got error %v, want status %d", res.Err, want)
	}
	if res.Resp.StatusCode != want {
		t.Fatalf("got status %d (body %q), want %d", res.Resp.StatusCode, res.Body, want)
	}
}

// testMetrics scrapes a Prometheus text exposition and returns each sample
// keyed by its series as `name{label="value",...}` with labels sorted, as
// the exposition prints them; a sample without labels is keyed by name.
func testMetrics(t testing.TB, c *http.Client, u string, hdr map[string]string) map[string]float64 {
	t.Helper()
	res := testFetch(t, c, http.MethodGet, u, hdr, nil)
	testStatus(t, res, http.StatusOK)
	return testParseMetrics(t, string(res.Body))
}

func testParseMetrics(t testing.TB, text string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// testCtx returns a context cancelled when the test ends.
func testCtx(t testing.TB) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx, cancel
}
