package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/admission"
)

const testAdminToken = "s3cret-admin-token"

// testNewAdmin serves p's admin endpoints, closed when the test ends.
func testNewAdmin(t testing.TB, p *testProxy, token string) *httptest.Server {
	t.Helper()
	log, _ := testLogger(t)
	a := admin.New(p.Handler, p.Ctrl, admin.Options{Token: token, Gatherer: p.Reg, Upstream: p.Handler.upstream, ReadyTimeout: testTimeout}, log)
	s := httptest.NewServer(a)
	t.Cleanup(s.Close)
	return s
}

func TestAdminHealthz(t *testing.T) {
	p := testNewProxy(t, "http://"+testDeadAddr(t), testLimits(), Options{})
	admin := testNewAdmin(t, p, "")
	res := testFetch(t, admin.Client(), http.MethodGet, admin.URL+"/healthz", nil, nil)
	testStatus(t, res, http.StatusOK)
	if string(res.Body) != "ok\n" {
		t.Errorf("body: got %q, want %q", res.Body, "ok\n")
	}
}

func TestAdminReadyz(t *testing.T) {
	tests := []struct {
		name      string
		listening bool
		want      int
	}{
		{"upstream listening", true, http.StatusOK},
		{"nothing listening", false, http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			upstream := "http://" + testDeadAddr(t)
			if tt.listening {
				upstream = testUpstream(t, testOK).URL
			}
			p := testNewProxy(t, upstream, testLimits(), Options{})
			admin := testNewAdmin(t, p, "")
			res := testFetch(t, admin.Client(), http.MethodGet, admin.URL+"/readyz", nil, nil)
			testStatus(t, res, tt.want)
		})
	}
}

// testJSONPath walks a decoded JSON document along keys.
func testJSONPath(doc any, keys ...string) (any, bool) {
	for _, k := range keys {
		m, ok := doc.(map[string]any)
		if !ok {
			return nil, false
		}
		if doc, ok = m[k]; !ok {
			return nil, false
		}
	}
	return doc, true
}

func TestAdminStatus(t *testing.T) {
	var limits admission.Limits
	limits.Budget = 4
	limits.Lane[admission.Core] = admission.LaneLimits{Reserved: 1, Max: 2, Queue: 3, QueueTimeout: testTimeout}
	limits.Lane[admission.Login] = admission.LaneLimits{Reserved: 1, Max: 1}
	limits.Lane[admission.Export] = admission.LaneLimits{Max: 1, Queue: 1, QueueTimeout: time.Second}
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, limits, Options{})
	admin := testNewAdmin(t, p, testAdminToken)

	// Two core requests fill the core lane and a third queues; one login
	// takes the login lane and a second is shed.
	var pending []<-chan testResult
	for range 2 {
		pending = append(pending, testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/page", nil, nil)))
		testAwait(t, gate)
	}
	pending = append(pending, testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/page", nil, nil)))
	testWaitFor(t, "a core request to queue", func() bool { return testLane(p.Ctrl, admission.Core).Queued == 1 })
	pending = append(pending, testGo(p.Client, testRequest(t, http.MethodPost, p.Server.URL+"/accounts/login/", nil, strings.NewReader("u=a"))))
	testAwait(t, gate)
	testStatus(t, testFetch(t, p.Client, http.MethodPost, p.Server.URL+"/accounts/login/", nil, strings.NewReader("u=b")), http.StatusServiceUnavailable)

	res := testFetch(t, admin.Client(), http.MethodGet, admin.URL+"/status", map[string]string{"Authorization": "Bearer " + testAdminToken}, nil)
	testStatus(t, res, http.StatusOK)
	if got := res.Resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type: got %q, want application/json", got)
	}
	if strings.Contains(string(res.Body), testAdminToken) {
		t.Errorf("status document: got %q, want it not to contain the admin token", res.Body)
	}
	var doc any
	if err := json.Unmarshal(res.Body, &doc); err != nil {
		t.Fatalf("status document %q: %v", res.Body, err)
	}
	tests := []struct {
		path []string
		want any
	}{
		{[]string{"mode"}, "enforce"},
		{[]string{"budget"}, 4.0},
		{[]string{"in_flight"}, 3.0},
		{[]string{"lanes", "core", "reserved"}, 1.0},
		{[]string{"lanes", "core", "max"}, 2.0},
		{[]string{"lanes", "core", "queue"}, 3.0},
		{[]string{"lanes", "core", "queue_timeout"}, testTimeout.String()},
		{[]string{"lanes", "core", "in_flight"}, 2.0},
		{[]string{"lanes", "core", "queued"}, 1.0},
		{[]string{"lanes", "core", "admitted"}, 2.0},
		{[]string{"lanes", "core", "shed"}, 0.0},
		{[]string{"lanes", "login", "reserved"}, 1.0},
		{[]string{"lanes", "login", "max"}, 1.0},
		{[]string{"lanes", "login", "in_flight"}, 1.0},
		{[]string{"lanes", "login", "queued"}, 0.0},
		{[]string{"lanes", "login", "admitted"}, 1.0},
		{[]string{"lanes", "login", "shed"}, 1.0},
		{[]string{"lanes", "login", "decisions", "queue_full"}, 1.0},
		{[]string{"lanes", "export", "max"}, 1.0},
		{[]string{"lanes", "export", "queue_timeout"}, "1s"},
		{[]string{"lanes", "export", "in_flight"}, 0.0},
		{[]string{"lanes", "export", "admitted"}, 0.0},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.path, "."), func(t *testing.T) {
			got, ok := testJSONPath(doc, tt.path...)
			if !ok || got != tt.want {
				t.Errorf("got %v (present %v), want %v", got, ok, tt.want)
			}
		})
	}

	gate.Open()
	for _, ch := range pending {
		testStatus(t, testReceive(t, ch), http.StatusOK)
	}
	testWaitIdle(t, p.Ctrl)
}

func TestAdminPutMode(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(0), Options{})
	admin := testNewAdmin(t, p, "")
	first := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/first", nil, nil))
	testAwait(t, gate)

	steps := []struct {
		body   string
		status int
		mode   admission.Mode // in force afterwards
		// a core request sent afterwards, with the budget full, reaches the
		// upstream (true) or is shed
		forwarded bool
	}{
		{"shadow\n", http.StatusOK, admission.Shadow, true},
		{"bogus", http.StatusBadRequest, admission.Shadow, true},
		{"enforce", http.StatusOK, admission.Enforce, false},
		{"", http.StatusBadRequest, admission.Enforce, false},
		{"Off", http.StatusBadRequest, admission.Enforce, false},
		{" off \n", http.StatusOK, admission.Off, true},
	}
	var pending []<-chan testResult
	for _, s := range steps {
		t.Run(strings.TrimSpace(s.body), func(t *testing.T) {
			res := testFetch(t, admin.Client(), http.MethodPut, admin.URL+"/admission", nil, strings.NewReader(s.body))
			testStatus(t, res, s.status)
			if got := p.Handler.Mode(); got != s.mode {
				t.Fatalf("handler mode: got %s, want %s", got, s.mode)
			}
			res = testFetch(t, admin.Client(), http.MethodGet, admin.URL+"/admission", nil, nil)
			testStatus(t, res, http.StatusOK)
			if got := strings.TrimSpace(string(res.Body)); got != string(s.mode) {
				t.Errorf("GET /admission: got %q, want %q", got, s.mode)
			}
			ch := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/next", nil, nil))
			if !s.forwarded {
				testStatus(t, testReceive(t, ch), http.StatusServiceUnavailable)
				return
			}
			testAwait(t, gate)
			pending = append(pending, ch)
		})
	}
	gate.Open()
	testStatus(t, testReceive(t, first), http.StatusOK)
	for _, ch := range pending {
		testStatus(t, testReceive(t, ch), http.StatusOK)
	}
	testWaitIdle(t, p.Ctrl)
}

func TestAdminToken(t *testing.T) {
	up := testUpstream(t, testOK)
	p := testNewProxy(t, up.URL, testLimits(), Options{})
	admin := testNewAdmin(t, p, testAdminToken)
	auths := []struct {
		name, header string
		ok           bool
	}{
		{"none", "", false},
		{"wrong token", "Bearer wrong", false},
		{"token as prefix", "Bearer " + testAdminToken + "x", false},
		{"bare token", testAdminToken, false},
		{"basic scheme", "Basic " + testAdminToken, false},
		{"right token", "Bearer " + testAdminToken, true},
	}
	endpoints := []struct {
		method, path, body string
		open               bool // no token needed
	}{
		{http.MethodGet, "/healthz", "", true},
		{http.MethodGet, "/readyz", "", true},
		{http.MethodGet, "/status", "", false},
		{http.MethodGet, "/metrics", "", false},
		{http.MethodGet, "/admission", "", false},
		{http.MethodPut, "/admission", "shadow", false},
	}
	for _, ep := range endpoints {
		for _, a := range auths {
			t.Run(ep.method+" "+ep.path+"/"+a.name, func(t *testing.T) {
				p.Handler.SetMode(admission.Enforce)
				hdr := map[string]string{}
				if a.header != "" {
					hdr["Authorization"] = a.header
				}
				res := testFetch(t, admin.Client(), ep.method, admin.URL+ep.path, hdr, strings.NewReader(ep.body))
				want := http.StatusUnauthorized
				if ep.open || a.ok {
					want = http.StatusOK
				}
				testStatus(t, res, want)
				if want == http.StatusUnauthorized {
					if got := res.Resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
						t.Errorf("WWW-Authenticate: got %q, want a Bearer challenge", got)
					}
					if strings.Contains(string(res.Body), testAdminToken) {
						t.Errorf("401 body: got %q, want it not to contain the token", res.Body)
					}
				}
				if ep.method == http.MethodPut {
					wantMode := admission.Enforce
					if want == http.StatusOK {
						wantMode = admission.Shadow
					}
					if got := p.Handler.Mode(); got != wantMode {
						t.Errorf("mode after PUT: got %s, want %s", got, wantMode)
					}
				}
			})
		}
	}
}

func TestAdminMetrics(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(1), Options{MaxBodyBytes: 10})
	admin := testNewAdmin(t, p, testAdminToken)
	auth := map[string]string{"Authorization": "Bearer " + testAdminToken}

	// One core request holds the only slot, a second queues, a third finds
	// the queue full; a static file bypasses; an oversized body is refused.
	a := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/a", nil, nil))
	testAwait(t, gate)
	b := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/b", nil, nil))
	testWaitFor(t, "a core request to queue", func() bool { return testLane(p.Ctrl, admission.Core).Queued == 1 })
	testStatus(t, testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/c", nil, nil), http.StatusServiceUnavailable)
	static := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/static/app.js", nil, nil))
	testAwait(t, gate)
	testStatus(t, testFetch(t, p.Client, http.MethodPost, p.Server.URL+"/upload", nil, strings.NewReader(strings.Repeat("x", 100))), http.StatusRequestEntityTooLarge)
	const sent = 5

	m := testMetrics(t, admin.Client(), admin.URL+"/metrics", auth)
	during := []struct {
		series string
		want   float64
	}{
		{`lanegate_budget`, 1},
		{`lanegate_in_flight`, 1},
		{`lanegate_lane_in_flight{lane="core"}`, 1},
		{`lanegate_lane_in_flight{lane="login"}`, 0},
		{`lanegate_lane_queued{lane="core"}`, 1},
		{`lanegate_lane_reserved{lane="core"}`, 1},
		{`lanegate_lane_max{lane="core"}`, 1},
		{`lanegate_requests_total{decision="admitted",lane="core"}`, 1},
		{`lanegate_requests_total{decision="queue_full",lane="core"}`, 1},
		{`lanegate_requests_total{decision="bypass",lane="bypass"}`, 1},
		{`lanegate_requests_total{decision="body_too_large",lane="core"}`, 1},
	}
	for _, tt := range during {
		if got, ok := m[tt.series]; !ok || got != tt.want {
			t.Errorf("while held: %s: got %v (present %v), want %v", tt.series, got, ok, tt.want)
		}
	}
	var total float64
	for k, v := range m {
		if strings.HasPrefix(k, "lanegate_requests_total{") {
			total += v
		}
	}
	// The queued request has no decision yet.
	if total != sent-1 {
		t.Errorf("sum of lanegate_requests_total while one waits: got %v, want %d", total, sent-1)
	}

	gate.Open()
	for _, ch := range []<-chan testResult{a, b, static} {
		testStatus(t, testReceive(t, ch), http.StatusOK)
	}
	testWaitIdle(t, p.Ctrl)
	m = testMetrics(t, admin.Client(), admin.URL+"/metrics", auth)
	after := []struct {
		series string
		want   float64
	}{
		{`lanegate_in_flight`, 0},
		{`lanegate_lane_in_flight{lane="core"}`, 0},
		{`lanegate_lane_queued{lane="core"}`, 0},
		{`lanegate_requests_total{decision="admitted",lane="core"}`, 2},
		{`lanegate_requests_total{decision="queue_full",lane="core"}`, 1},
		{`lanegate_queue_wait_seconds_count{lane="core"}`, 2},
		{`lanegate_queue_wait_seconds_count{lane="login"}`, 0},
		{`lanegate_upstream_seconds_count{lane="core"}`, 2},
		{`lanegate_upstream_seconds_count{lane="bypass"}`, 1},
		{`lanegate_upstream_seconds_count{lane="export"}`, 0},
	}
	for _, tt := range after {
		if got, ok := m[tt.series]; !ok || got != tt.want {
			t.Errorf("after: %s: got %v (present %v), want %v", tt.series, got, ok, tt.want)
		}
	}
	total = 0
	for k, v := range m {
		if strings.HasPrefix(k, "lanegate_requests_total{") {
			total += v
		}
	}
	if total != sent {
		t.Errorf("sum of lanegate_requests_total: got %v, want %d", total, sent)
	}
	if got := m[`lanegate_queue_wait_seconds_sum{lane="core"}`]; got <= 0 {
		t.Errorf("core queue wait sum: got %v, want > 0 (one request queued)", got)
	}
}
