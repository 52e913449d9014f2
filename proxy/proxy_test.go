package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/metrics"
)

var testLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

func TestForwardHeaders(t *testing.T) {
	tests := []struct {
		name      string
		trusted   []netip.Prefix
		hdr       map[string]string
		wantXFF   string
		wantProto string
		wantFHost string
	}{
		{
			name: "untrusted peer: forged chain overwritten",
			hdr: map[string]string{
				"Host":              "app.example.com",
				"X-Forwarded-For":   "6.6.6.6",
				"X-Forwarded-Proto": "https",
				"X-Forwarded-Host":  "evil.example",
				"Forwarded":         "for=6.6.6.6;proto=https",
			},
			wantXFF:   "127.0.0.1",
			wantProto: "http",
			wantFHost: "app.example.com",
		},
		{
			name:      "untrusted peer: no forwarding headers",
			hdr:       map[string]string{"Host": "app.example.com"},
			wantXFF:   "127.0.0.1",
			wantProto: "http",
			wantFHost: "app.example.com",
		},
		{
			name:    "trusted peer: chain appended, proto and host kept",
			trusted: testLoopback,
			hdr: map[string]string{
				"Host":              "app.example.com",
				"X-Forwarded-For":   "6.6.6.6",
				"X-Forwarded-Proto": "https",
				"X-Forwarded-Host":  "front.example",
				"Forwarded":         "for=6.6.6.6;proto=https",
			},
			wantXFF:   "6.6.6.6, 127.0.0.1",
			wantProto: "https",
			wantFHost: "front.example",
		},
		{
			name:      "trusted peer: no forwarding headers",
			trusted:   testLoopback,
			hdr:       map[string]string{"Host": "app.example.com"},
			wantXFF:   "127.0.0.1",
			wantProto: "http",
			wantFHost: "app.example.com",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gate := testNewGate()
			gate.Open()
			up := testUpstream(t, gate)
			p := testNewProxy(t, up.URL, testLimits(), Options{TrustedProxies: tt.trusted})

			res := testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/page", tt.hdr, nil)
			testStatus(t, res, http.StatusOK)
			a := testAwait(t, gate)
			if a.Host != "app.example.com" {
				t.Errorf("upstream Host: got %q, want %q", a.Host, "app.example.com")
			}
			if got := strings.Join(a.Header.Values("X-Forwarded-For"), ", "); got != tt.wantXFF {
				t.Errorf("X-Forwarded-For: got %q, want %q", got, tt.wantXFF)
			}
			if got := a.Header.Values("X-Forwarded-Proto"); len(got) != 1 || got[0] != tt.wantProto {
				t.Errorf("X-Forwarded-Proto: got %q, want [%q]", got, tt.wantProto)
			}
			if got := a.Header.Values("X-Forwarded-Host"); len(got) != 1 || got[0] != tt.wantFHost {
				t.Errorf("X-Forwarded-Host: got %q, want [%q]", got, tt.wantFHost)
			}
			if got := a.Header.Values("Forwarded"); len(got) != 0 {
				t.Errorf("Forwarded: got %q, want none", got)
			}
		})
	}
}

// testRawExchange writes raw to a new connection to addr and reads one
// response, so that a test controls every byte of the request.
func testRawExchange(t *testing.T, addr, raw string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	return resp, body
}

func TestForwardHopByHop(t *testing.T) {
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Bar")
		h.Set("X-Bar", "hop")
		h.Set("Keep-Alive", "timeout=1")
		h.Set("X-Kept", "end-to-end")
		gate.ServeHTTP(w, r)
	}))
	p := testNewProxy(t, up.URL, testLimits(), Options{})

	raw := "GET /page HTTP/1.1\r\n" +
		"Host: app.example.com\r\n" +
		"Connection: X-Foo, Keep-Alive\r\n" +
		"X-Foo: hop\r\n" +
		"Keep-Alive: timeout=5\r\n" +
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n" +
		"Proxy-Connection: keep-alive\r\n" +
		"Te: gzip\r\n" +
		"Upgrade: h2c\r\n" +
		"X-Keep: end-to-end\r\n" +
		"\r\n"
	resp, body := testRawExchange(t, p.Server.Listener.Addr().String(), raw)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status: got %d (body %q), want 200", resp.StatusCode, body)
	}
	a := testAwait(t, gate)
	for _, name := range []string{"Connection", "X-Foo", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "Upgrade"} {
		if v := a.Header.Values(name); len(v) != 0 {
			t.Errorf("upstream request header %s: got %q, want none", name, v)
		}
	}
	if got := a.Header.Get("X-Keep"); got != "end-to-end" {
		t.Errorf("upstream request header X-Keep: got %q, want %q", got, "end-to-end")
	}
	for _, name := range []string{"X-Bar", "Keep-Alive"} {
		if v := resp.Header.Values(name); len(v) != 0 {
			t.Errorf("response header %s: got %q, want none", name, v)
		}
	}
	if got := resp.Header.Get("X-Kept"); got != "end-to-end" {
		t.Errorf("response header X-Kept: got %q, want %q", got, "end-to-end")
	}
}

func TestForwardURL(t *testing.T) {
	tests := []struct {
		name string
		uri  string
	}{
		{"plain", "/accounts/profile/"},
		{"query", "/search?q=a%20b&x=1&x=2"},
		{"encoded slash kept", "/files/a%2Fb/c?name=%26amp"},
		{"empty query value", "/list?page=&sort"},
		{"unicode", "/caf%C3%A9?q=%E2%82%AC"},
	}
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testLimits(), Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := testRawExchange(t, p.Server.Listener.Addr().String(),
				"GET "+tt.uri+" HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status: got %d (body %q), want 200", resp.StatusCode, body)
			}
			if a := testAwait(t, gate); a.URI != tt.uri {
				t.Errorf("upstream request URI: got %q, want %q", a.URI, tt.uri)
			}
		})
	}
}

// testBytes returns n reproducible pseudo-random bytes, every byte value
// included, chunk-terminator look-alikes too.
func testBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	if n > 16 {
		copy(b[n/2:], "\r\n0\r\n\r\n")
	}
	return b
}

// testOnlyReader hides a reader's concrete type, so that a request built
// on it has no known length and is sent chunked.
type testOnlyReader struct{ io.Reader }

func TestForwardBody(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		chunked bool
	}{
		{"empty", 0, false},
		{"small", 13, false},
		{"one MiB with length", 1 << 20, false},
		{"small chunked", 13, true},
		{"one MiB chunked", 1 << 20, true},
	}
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testLimits(), Options{MaxBodyBytes: 2 << 20})
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := testBytes(tt.size, uint64(i))
			var body io.Reader = bytes.NewReader(want)
			if tt.chunked {
				body = testOnlyReader{body}
			}
			req := testRequest(t, http.MethodPost, p.Server.URL+"/upload", map[string]string{"Content-Type": "application/octet-stream"}, body)
			if tt.chunked {
				req.ContentLength = -1
			}
			res := testDo(p.Client, req)
			testStatus(t, res, http.StatusOK)
			a := testAwait(t, gate)
			if !bytes.Equal(a.Body, want) {
				t.Errorf("upstream body: got %d bytes (first diff at %d), want the %d bytes sent",
					len(a.Body), testFirstDiff(a.Body, want), len(want))
			}
		})
	}
}

func testFirstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestLoginBucketPerClient(t *testing.T) {
	limits := testLimits()
	limits.LoginPerClient = admission.RateLimit{Rate: 0.001, Burst: 1}
	limits.MaxClients = 100
	// peer is the loopback address a login comes from; xff what it claims.
	type login struct {
		peer, xff string
		want      int
	}
	tests := []struct {
		name    string
		trusted []netip.Prefix
		logins  []login
	}{
		{
			name:    "trusted peer: one bucket per forwarded client",
			trusted: testLoopback,
			logins: []login{
				{"127.0.0.1", "1.1.1.1", 200},
				{"127.0.0.1", "2.2.2.2", 200},
				{"127.0.0.1", "1.1.1.1", 429},
				{"127.0.0.2", "9.9.9.9, 2.2.2.2", 429}, // another proxy, same client
			},
		},
		{
			name:    "trusted peer: trusted hops skipped",
			trusted: testLoopback,
			logins: []login{
				{"127.0.0.1", "1.1.1.1, 127.0.0.5", 200},
				{"127.0.0.1", "1.1.1.1", 429},
			},
		},
		{
			name:    "trusted peer: without a chain or with a malformed one, the peer's bucket",
			trusted: testLoopback,
			logins: []login{
				{"127.0.0.1", "", 200},
				{"127.0.0.2", "", 200},
				{"127.0.0.1", "not-an-address", 429},
				{"127.0.0.2", "1.1.1.1, bogus", 429},
			},
		},
		{
			name: "untrusted peer: forged chain buys no bucket",
			logins: []login{
				{"127.0.0.1", "3.3.3.3", 200},
				{"127.0.0.1", "4.4.4.4", 429},
				{"127.0.0.1", "", 429},
				{"127.0.0.2", "3.3.3.3", 200}, // its own bucket, whatever it claims
				{"127.0.0.2", "", 429},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gate := testNewGate()
			gate.Open()
			up := testUpstream(t, gate)
			p := testNewProxy(t, up.URL, limits, Options{TrustedProxies: tt.trusted})
			clients := map[string]*http.Client{}
			want := 0
			for i, l := range tt.logins {
				c := clients[l.peer]
				if c == nil {
					c = testClientFrom(t, l.peer)
					clients[l.peer] = c
				}
				hdr := map[string]string{}
				if l.xff != "" {
					hdr["X-Forwarded-For"] = l.xff
				}
				res := testFetch(t, c, http.MethodPost, p.Server.URL+"/accounts/login/", hdr, strings.NewReader("user=a"))
				if res.Resp.StatusCode != l.want {
					t.Errorf("login %d from %s with X-Forwarded-For %q: got status %d, want %d", i+1, l.peer, l.xff, res.Resp.StatusCode, l.want)
				}
				if l.want == http.StatusOK {
					want++
				}
			}
			if got := gate.Hits(); got != int64(want) {
				t.Errorf("logins reaching the upstream: got %d, want %d", got, want)
			}
		})
	}
}

func TestStreaming(t *testing.T) {
	const first, second = "data: one\n\n", "data: two\n\n"
	tests := []struct {
		name        string
		contentType string
		length      bool // send a Content-Length, so only the type can make it stream
	}{
		{"chunked", "text/plain; charset=utf-8", false},
		{"event stream", "text/event-stream", false},
		{"event stream with length", "text/event-stream; charset=utf-8", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			var once sync.Once
			releaseUp := func() { once.Do(func() { close(release) }) }
			defer releaseUp()
			up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				if tt.length {
					w.Header().Set("Content-Length", strconv.Itoa(len(first)+len(second)))
				}
				io.WriteString(w, first)
				http.NewResponseController(w).Flush()
				select {
				case <-release:
					io.WriteString(w, second)
				case <-r.Context().Done():
				}
			}))
			p := testNewProxy(t, up.URL, testLimits(), Options{})

			resp, got := testFirstBytes(t, p.Client, p.Server.URL+"/events", len(first))
			if got != first {
				t.Fatalf("first chunk: got %q, want %q", got, first)
			}
			if n := testLane(p.Ctrl, admission.Core).InFlight; n != 1 {
				t.Errorf("core in flight while streaming: got %d, want 1", n)
			}
			releaseUp()
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(rest) != second {
				t.Errorf("rest of the stream: got %q, %v, want %q, nil", rest, err, second)
			}
			if got := resp.Header.Get("Content-Type"); got != tt.contentType {
				t.Errorf("Content-Type: got %q, want %q", got, tt.contentType)
			}
		})
	}
}

func TestUpgrade(t *testing.T) {
	up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw.Reader) // echo until the proxy closes
	}))
	p := testNewProxy(t, up.URL, testLimits(), Options{AccessLog: true})

	conn, err := net.Dial("tcp", p.Server.Listener.Addr().String())
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(conn, "GET /ws/chat HTTP/1.1\r\nHost: app.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: got error %v, want 101", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("status: got %d (body %q), want 101", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Upgrade"); !strings.EqualFold(got, "websocket") {
		t.Errorf("Upgrade header: got %q, want websocket", got)
	}
	for _, msg := range []string{"ping", "hello, echo"} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo: got %q, %v, want %q, nil", buf, err, msg)
		}
	}
	conn.Close()
	testWaitIdle(t, p.Ctrl)
	// The connection was an upgrade, not a request the app took this long
	// to answer: its time is no service time.
	if got := testLane(p.Ctrl, admission.Core).ServiceTime; got != 0 {
		t.Errorf("core service time after only an upgrade: %s, want none", got)
	}
	testWaitFor(t, "the access log line of the upgrade", func() bool {
		return p.Logs.FilterMessage("request").Len() == 1
	})
	entry := p.Logs.FilterMessage("request").All()[0].ContextMap()
	if got := entry["status"]; got != int64(http.StatusSwitchingProtocols) {
		t.Errorf("access log status of the upgrade: got %v, want 101", got)
	}
}

func TestUpstreamFailures(t *testing.T) {
	tests := []struct {
		name     string
		dead     bool // nothing listens; otherwise the upstream never answers
		accept   string
		status   int
		ctype    string
		body     string
		errLabel string
	}{
		{"refused, text", true, "", http.StatusBadGateway, "text/plain; charset=utf-8", "upstream refused the connection\n", "refused"},
		{"refused, json", true, "application/json", http.StatusBadGateway, "application/json", `{"error":"upstream refused the connection"}` + "\n", "refused"},
		{"header timeout, text", false, "", http.StatusGatewayTimeout, "text/plain; charset=utf-8", "upstream timed out\n", "timeout"},
		{"header timeout, json", false, "application/json", http.StatusGatewayTimeout, "application/json", `{"error":"upstream timed out"}` + "\n", "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var upstream string
			if tt.dead {
				upstream = "http://" + testDeadAddr(t)
			} else {
				gate := testNewGate()
				defer gate.Open()
				upstream = testUpstream(t, gate).URL
			}
			p := testNewProxy(t, upstream, testLimits(), Options{
				DialTimeout:           testTimeout,
				ResponseHeaderTimeout: 200 * time.Millisecond,
			})
			hdr := map[string]string{}
			if tt.accept != "" {
				hdr["Accept"] = tt.accept
			}
			res := testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/page", hdr, nil)
			testStatus(t, res, tt.status)
			if got := res.Resp.Header.Get("Content-Type"); got != tt.ctype {
				t.Errorf("Content-Type: got %q, want %q", got, tt.ctype)
			}
			if string(res.Body) != tt.body {
				t.Errorf("body: got %q, want %q", res.Body, tt.body)
			}
			if got := res.Resp.Header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			testWaitIdle(t, p.Ctrl)
			m := testParseMetrics(t, testGather(t, p))
			if got := m[`lanegate_upstream_errors_total{kind="`+tt.errLabel+`"}`]; got != 1 {
				t.Errorf("upstream errors of kind %s: got %v, want 1", tt.errLabel, got)
			}
		})
	}
}

// Logins the upstream fails (refused at once) are not completions: the
// waiting room's completion rate, which every wait estimate divides by,
// stays unmeasured instead of reading thousands a second.
func TestFailedLoginsAreNotCompletions(t *testing.T) {
	p := testNewProxy(t, "http://"+testDeadAddr(t), testLimits(), Options{DialTimeout: testTimeout})
	for range 5 {
		res := testFetch(t, p.Client, http.MethodPost, p.Server.URL+"/accounts/login/", nil, strings.NewReader("login=a&password=b"))
		testStatus(t, res, http.StatusBadGateway)
	}
	testWaitIdle(t, p.Ctrl)
	snap := p.Ctrl.Snapshot()
	if snap.Room.Rate != 0 || snap.Lanes[admission.Login].ServiceTime != 0 {
		t.Fatalf("after 5 logins refused by the upstream: completion rate %g/s, login service time %s; want neither measured",
			snap.Room.Rate, snap.Lanes[admission.Login].ServiceTime)
	}
}

// testGather renders p's metrics in the text exposition format.
func testGather(t *testing.T, p *testProxy) string {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9090/metrics", nil)
	admin.New(p.Handler, p.Ctrl, admin.Options{Gatherer: p.Reg}, nil).ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("metrics: got status %d, want 200", rec.Code)
	}
	return rec.Body.String()
}

func TestBodyLimit(t *testing.T) {
	const limit = 10
	tests := []struct {
		name     string
		size     int
		chunked  bool
		status   int
		tooLarge float64 // lanegate_requests_total{decision="body_too_large"}
	}{
		{"length over limit", 100, false, http.StatusRequestEntityTooLarge, 1},
		{"length at limit", limit, false, http.StatusOK, 0},
		{"chunked over limit", 64, true, http.StatusRequestEntityTooLarge, 0},
		{"chunked at limit", limit, true, http.StatusOK, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type got struct {
				n   int
				err error
			}
			bodies := make(chan got, 8)
			up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, err := io.ReadAll(r.Body)
				bodies <- got{len(b), err}
				io.WriteString(w, "ok")
			}))
			p := testNewProxy(t, up.URL, testLimits(), Options{MaxBodyBytes: limit})

			var body io.Reader = bytes.NewReader(bytes.Repeat([]byte("x"), tt.size))
			if tt.chunked {
				body = testOnlyReader{body}
			}
			req := testRequest(t, http.MethodPost, p.Server.URL+"/upload", nil, body)
			if tt.chunked {
				req.ContentLength = -1
			}
			res := testDo(p.Client, req)
			testStatus(t, res, tt.status)
			if tt.status == http.StatusRequestEntityTooLarge {
				if want := "request body too large\n"; string(res.Body) != want {
					t.Errorf("body: got %q, want %q", res.Body, want)
				}
			}
			testWaitIdle(t, p.Ctrl)
			m := testParseMetrics(t, testGather(t, p))
			if got := m[`lanegate_requests_total{decision="body_too_large",lane="core"}`]; got != tt.tooLarge {
				t.Errorf(`requests_total{decision="body_too_large"}: got %v, want %v`, got, tt.tooLarge)
			}
			// Closing the upstream waits for its handlers, so every body it
			// was given has been reported.
			up.Close()
			close(bodies)
			var complete int
			for b := range bodies {
				if b.err == nil && b.n == tt.size {
					complete++
				}
			}
			want := 0
			if tt.status == http.StatusOK {
				want = 1
			}
			if complete != want {
				t.Errorf("complete bodies the upstream read: got %d, want %d", complete, want)
			}
		})
	}
}

func TestShed(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(0), Options{})
	first := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/first", nil, nil))
	testAwait(t, gate)

	tests := []struct {
		name   string
		method string
		hdr    map[string]string
		json   bool
	}{
		{"browser gets html", http.MethodGet, map[string]string{"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, false},
		{"no accept gets html", http.MethodGet, nil, false},
		{"html listed before json gets html", http.MethodGet, map[string]string{"Accept": "text/html, application/json"}, false},
		{"accept json", http.MethodGet, map[string]string{"Accept": "application/json"}, true},
		{"json preferred over html", http.MethodGet, map[string]string{"Accept": "application/json, text/html;q=0.5"}, true},
		{"xhr", http.MethodGet, map[string]string{"X-Requested-With": "XMLHttpRequest"}, true},
		{"json request body", http.MethodPost, map[string]string{"Content-Type": "application/json; charset=utf-8"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.method == http.MethodPost {
				body = strings.NewReader(`{"a":1}`)
			}
			res := testFetch(t, p.Client, tt.method, p.Server.URL+"/api/items", tt.hdr, body)
			testStatus(t, res, http.StatusServiceUnavailable)
			retry := testRetryAfter(t, res.Resp)
			if got := res.Resp.Header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			if tt.json {
				testShedJSON(t, res, "overloaded", "queue_full", "core", retry)
				return
			}
			if got := res.Resp.Header.Get("Content-Type"); got != "text/html; charset=utf-8" {
				t.Errorf("Content-Type: got %q, want text/html; charset=utf-8", got)
			}
			for _, want := range []string{fmt.Sprintf("try again in %d seconds", retry), "queue_full", "<!doctype html>"} {
				if !strings.Contains(string(res.Body), want) {
					t.Errorf("html body: got %q, want it to contain %q", res.Body, want)
				}
			}
		})
	}
	if got := gate.Hits(); got != 1 {
		t.Errorf("requests reaching the upstream: got %d, want 1 (the shed ones must not)", got)
	}
	if got := testLane(p.Ctrl, admission.Core).Decisions[admission.QueueFull]; got != uint64(len(tests)) {
		t.Errorf("queue_full decisions: got %d, want %d", got, len(tests))
	}
	gate.Open()
	testStatus(t, testReceive(t, first), http.StatusOK)
	testWaitIdle(t, p.Ctrl)
}

func TestShedRateLimited(t *testing.T) {
	limits := testLimits()
	limits.LoginRate = admission.RateLimit{Rate: 0.001, Burst: 1}
	up := testUpstream(t, testOK)
	p := testNewProxy(t, up.URL, limits, Options{})
	login := func(hdr map[string]string) testResult {
		return testFetch(t, p.Client, http.MethodPost, p.Server.URL+"/accounts/login/", hdr, strings.NewReader("user=a"))
	}
	testStatus(t, login(nil), http.StatusOK)

	res := login(map[string]string{"Accept": "application/json"})
	testStatus(t, res, http.StatusTooManyRequests)
	retry := testRetryAfter(t, res.Resp)
	testShedJSON(t, res, "rate_limited", "rate_limited", "login", retry)

	res = login(nil)
	testStatus(t, res, http.StatusTooManyRequests)
	retry = testRetryAfter(t, res.Resp)
	if !strings.Contains(string(res.Body), "rate_limited") || !strings.Contains(string(res.Body), strconv.Itoa(retry)) {
		t.Errorf("html body: got %q, want it to name rate_limited and %d", res.Body, retry)
	}
	if got := testLane(p.Ctrl, admission.Login).Decisions[admission.RateLimited]; got != 2 {
		t.Errorf("rate_limited decisions: got %d, want 2", got)
	}
}

// testRetryAfter returns the Retry-After header, failing unless it is an
// integer of at least 1.
func testRetryAfter(t *testing.T, resp *http.Response) int {
	t.Helper()
	v := resp.Header.Get("Retry-After")
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("Retry-After: got %q, want an integer >= 1", v)
	}
	return n
}

func testShedJSON(t *testing.T, res testResult, errName, reason, lane string, retry int) {
	t.Helper()
	if got := res.Resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type: got %q, want application/json", got)
	}
	var got map[string]any
	if err := json.Unmarshal(res.Body, &got); err != nil {
		t.Fatalf("json body %q: %v", res.Body, err)
	}
	want := map[string]any{"error": errName, "reason": reason, "lane": lane, "retry_after": float64(retry)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("json body: got %v, want %v", got, want)
	}
}

func TestClientGoneWhileQueued(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(1), Options{AccessLog: true})

	first := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/first", nil, nil))
	if a := testAwait(t, gate); a.Path != "/first" {
		t.Fatalf("first upstream request: got %s, want /first", a.Path)
	}
	ctx, cancel := testCtx(t)
	req := testRequest(t, http.MethodGet, p.Server.URL+"/gone", nil, nil).WithContext(ctx)
	gone := testGo(p.Client, req)
	testWaitFor(t, "the second request to queue", func() bool { return testLane(p.Ctrl, admission.Core).Queued == 1 })
	cancel()
	if res := testReceive(t, gone); res.Err == nil {
		t.Fatalf("cancelled request: got status %d, want an error", res.Resp.StatusCode)
	}
	testWaitFor(t, "the cancelled request to leave the queue", func() bool {
		ln := testLane(p.Ctrl, admission.Core)
		return ln.Queued == 0 && ln.Decisions[admission.Cancelled] == 1
	})

	gate.Open()
	testStatus(t, testReceive(t, first), http.StatusOK)
	testStatus(t, testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/third", nil, nil), http.StatusOK)
	if a := testAwait(t, gate); a.Path != "/third" {
		t.Errorf("second upstream request: got %s, want /third (the cancelled one must never arrive)", a.Path)
	}
	if got := gate.Hits(); got != 2 {
		t.Errorf("requests reaching the upstream: got %d, want 2", got)
	}
	testWaitIdle(t, p.Ctrl)
	var found bool
	for _, e := range p.Logs.FilterMessage("request").All() {
		m := e.ContextMap()
		if m["path"] != "/gone" {
			continue
		}
		found = true
		if m["decision"] != metrics.DecisionClientGone || m["status"] != int64(statusClientClosed) {
			t.Errorf("access log of the cancelled request: got decision %v status %v, want %s %d",
				m["decision"], m["status"], metrics.DecisionClientGone, statusClientClosed)
		}
	}
	if !found {
		t.Errorf("access log of the cancelled request: got none, want one")
	}
}

// testLateAdmitter grants a slot only once the request's client has gone,
// as when a client leaves just as its slot arrives.
type testLateAdmitter struct {
	*admission.Controller
	entered chan struct{}
}

func (a *testLateAdmitter) Acquire(ctx context.Context, r admission.Request) (*admission.Permit, error) {
	a.entered <- struct{}{}
	<-ctx.Done()
	return a.Controller.Acquire(context.Background(), r)
}

func TestClientGoneAsAdmitted(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	late := &testLateAdmitter{entered: make(chan struct{}, 1)}
	p := testNewProxyWith(t, up.URL, testLimits(), Options{AccessLog: true}, func(c *admission.Controller) Admitter {
		late.Controller = c
		return late
	})
	ctx, cancel := testCtx(t)
	gone := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/gone", nil, nil).WithContext(ctx))
	select {
	case <-late.entered:
	case <-time.After(testTimeout):
		t.Fatalf("the request never asked for admission")
	}
	cancel()
	if res := testReceive(t, gone); res.Err == nil {
		t.Fatalf("cancelled request: got status %d, want an error", res.Resp.StatusCode)
	}
	testWaitFor(t, "the access log line of the cancelled request", func() bool {
		return p.Logs.FilterMessage("request").Len() == 1
	})
	entry := p.Logs.FilterMessage("request").All()[0].ContextMap()
	if entry["decision"] != metrics.DecisionClientGone || entry["status"] != int64(statusClientClosed) {
		t.Errorf("access log: got decision %v status %v, want %s %d", entry["decision"], entry["status"], metrics.DecisionClientGone, statusClientClosed)
	}
	if n := p.Ctrl.Snapshot().InFlight; n != 0 {
		t.Errorf("in flight after the request left: got %d, want 0", n)
	}
	m := testParseMetrics(t, testGather(t, p))
	if got := m[`lanegate_upstream_seconds_count{lane="core"}`]; got != 0 {
		t.Errorf("requests forwarded: got %v, want 0", got)
	}
	if got := gate.Hits(); got != 0 {
		t.Errorf("requests reaching the upstream: got %d, want 0", got)
	}
}

func TestSlotHeldUntilBodyDone(t *testing.T) {
	const part1, part2 = "first half;", "second half"
	tests := []struct {
		name string
		// end finishes the exchange after part1 reached the client: it
		// releases the upstream and reads, or closes, the response.
		how string
	}{
		{"body completes", "complete"},
		{"client leaves mid-body", "client"},
		{"upstream dies mid-body", "upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			var once sync.Once
			releaseUp := func() { once.Do(func() { close(release) }) }
			defer releaseUp()
			up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, part1)
				http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				if tt.how == "upstream" {
					panic(http.ErrAbortHandler) // drop the connection mid-body
				}
				io.WriteString(w, part2)
			}))
			p := testNewProxy(t, up.URL, testLimits(), Options{})

			resp, got := testFirstBytes(t, p.Client, p.Server.URL+"/reports/big.csv", len(part1))
			if got != part1 {
				t.Fatalf("first part: got %q, want %q", got, part1)
			}
			if n := testLane(p.Ctrl, admission.Export).InFlight; n != 1 {
				t.Errorf("export in flight with the body incomplete: got %d, want 1", n)
			}
			switch tt.how {
			case "complete":
				releaseUp()
				rest, err := io.ReadAll(resp.Body)
				if err != nil || string(rest) != part2 {
					t.Fatalf("rest: got %q, %v, want %q, nil", rest, err, part2)
				}
				// The proxy ends a chunked body only once its handler has
				// returned, so the slot is free by now.
				if n := p.Ctrl.Snapshot().InFlight; n != 0 {
					t.Errorf("in flight after the body was read: got %d, want 0", n)
				}
			case "client":
				resp.Body.Close()
			case "upstream":
				releaseUp()
				if rest, err := io.ReadAll(resp.Body); err == nil {
					t.Errorf("rest after the upstream died: got %q, nil, want an error", rest)
				}
			}
			testWaitIdle(t, p.Ctrl)
		})
	}
}

func TestModeOff(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(0), Options{Mode: admission.Off})
	const n = 5
	results := make([]<-chan testResult, n)
	for i := range results {
		results[i] = testGo(p.Client, testRequest(t, http.MethodGet, fmt.Sprintf("%s/page/%d", p.Server.URL, i), nil, nil))
	}
	for range n {
		testAwait(t, gate)
	}
	ln := testLane(p.Ctrl, admission.Core)
	if ln.InFlight != n {
		t.Errorf("core in flight in mode off: got %d, want %d", ln.InFlight, n)
	}
	if got := ln.Decisions[admission.Passed]; got != n {
		t.Errorf("pass decisions: got %d, want %d", got, n)
	}
	gate.Open()
	for _, ch := range results {
		testStatus(t, testReceive(t, ch), http.StatusOK)
	}
	testWaitIdle(t, p.Ctrl)
}

func TestModeShadow(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(1), Options{Mode: admission.Shadow})
	// One at a time, so that each sees the one before in flight: the first
	// fits, the second would have queued, the third found the queue full.
	var results []<-chan testResult
	for i := range 3 {
		results = append(results, testGo(p.Client, testRequest(t, http.MethodGet, fmt.Sprintf("%s/page/%d", p.Server.URL, i), nil, nil)))
		testAwait(t, gate)
	}
	ln := testLane(p.Ctrl, admission.Core)
	want := map[admission.Decision]uint64{admission.ShadowAdmitted: 1, admission.ShadowQueued: 1, admission.ShadowQueueFull: 1}
	for _, d := range admission.Decisions() {
		if ln.Decisions[d] != want[d] {
			t.Errorf("decision %s: got %d, want %d", d, ln.Decisions[d], want[d])
		}
	}
	gate.Open()
	for _, ch := range results {
		testStatus(t, testReceive(t, ch), http.StatusOK)
	}
	testWaitIdle(t, p.Ctrl)
}

func TestSetMode(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(0), Options{})
	first := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/first", nil, nil))
	testAwait(t, gate)

	steps := []struct {
		mode admission.Mode
		want int
	}{
		{admission.Enforce, http.StatusServiceUnavailable},
		{admission.Off, http.StatusOK},
		{admission.Shadow, http.StatusOK},
		{admission.Enforce, http.StatusServiceUnavailable},
	}
	var pending []<-chan testResult
	for i, s := range steps {
		p.Handler.SetMode(s.mode)
		if got := p.Handler.Mode(); got != s.mode {
			t.Fatalf("Mode after SetMode(%s): got %s, want %s", s.mode, got, s.mode)
		}
		ch := testGo(p.Client, testRequest(t, http.MethodGet, fmt.Sprintf("%s/step/%d", p.Server.URL, i), nil, nil))
		if s.want == http.StatusOK {
			if a := testAwait(t, gate); a.Path != fmt.Sprintf("/step/%d", i) {
				t.Fatalf("step %d (%s): upstream got %s, want /step/%d", i, s.mode, a.Path, i)
			}
			pending = append(pending, ch)
			continue
		}
		testStatus(t, testReceive(t, ch), s.want)
	}
	ln := testLane(p.Ctrl, admission.Core)
	if ln.Decisions[admission.Passed] != 1 || ln.Decisions[admission.QueueFull] != 2 || ln.Decisions[admission.ShadowQueueFull] != 1 {
		t.Errorf("decisions pass/queue_full/shadow_queue_full: got %d/%d/%d, want 1/2/1",
			ln.Decisions[admission.Passed], ln.Decisions[admission.QueueFull], ln.Decisions[admission.ShadowQueueFull])
	}
	gate.Open()
	testStatus(t, testReceive(t, first), http.StatusOK)
	for _, ch := range pending {
		testStatus(t, testReceive(t, ch), http.StatusOK)
	}
	testWaitIdle(t, p.Ctrl)
}

func TestBypassIgnoresBudget(t *testing.T) {
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testTightLimits(0), Options{})
	first := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/page", nil, nil))
	testAwait(t, gate)

	static := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/static/x.css", nil, nil))
	if a := testAwait(t, gate); a.Path != "/static/x.css" {
		t.Fatalf("upstream got %s, want /static/x.css", a.Path)
	}
	if s := p.Ctrl.Snapshot(); s.InFlight != 1 {
		t.Errorf("in flight with a static file in the upstream: got %d, want 1", s.InFlight)
	}
	// Only GET and HEAD bypass: a POST under /static/ is core and full.
	testStatus(t, testFetch(t, p.Client, http.MethodPost, p.Server.URL+"/static/upload", nil, strings.NewReader("x")), http.StatusServiceUnavailable)

	gate.Open()
	testStatus(t, testReceive(t, static), http.StatusOK)
	testStatus(t, testReceive(t, first), http.StatusOK)
	testWaitIdle(t, p.Ctrl)
	var total uint64
	for _, ln := range p.Ctrl.Snapshot().Lanes {
		for _, n := range ln.Decisions {
			total += n
		}
	}
	if total != 2 {
		t.Errorf("controller decisions: got %d, want 2 (the page and the POST; never the static file)", total)
	}
	if got := p.Metrics.Bypassed(); got != 1 {
		t.Errorf("bypassed count: got %d, want 1", got)
	}
}

func BenchmarkHandler(b *testing.B) {
	up := testUpstream(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello, world\n")
	}))
	limits := testLimits()
	limits.Budget = admission.MaxBudget
	for _, l := range admission.Lanes() {
		limits.Lane[l].Max = admission.MaxBudget
	}
	ctrl, err := admission.New(limits)
	if err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse(up.URL)
	h, err := New(ctrl, Options{Upstream: u, Rules: testProxyRules, IdleConns: 256, Mode: admission.Enforce}, zap.NewNop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(h.Close)
	testBenchServe(b, h)
}

func BenchmarkHandlerDirectBaseline(b *testing.B) {
	up := testUpstream(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello, world\n")
	}))
	u, _ := url.Parse(up.URL)
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
	b.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: tr,
	}
	testBenchServe(b, rp)
}

func testBenchServe(b *testing.B, h http.Handler) {
	serve := func() {
		req := httptest.NewRequest(http.MethodGet, "/accounts/profile/", nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			panic(fmt.Sprintf("status: got %d, want 200", rec.Code))
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			serve()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				serve()
			}
		})
	})
}
