package main

// The fault suite: an upstream that refuses, resets, hangs or restarts,
// and clients that leave at every stage of a request. Whatever happens,
// the client is told (a status, or the bytes so far and a closed
// connection), nothing reaches the upstream after its client left, and
// every slot comes back: in-flight and queued return to zero.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
)

// faultUpstream is an app server written against TCP, so that a test
// decides what goes on the wire and when: the request's path selects a
// behaviour. Each request's path is sent on arrived once its head is read;
// ended receives "path: how", how the connection's request body reading
// ended ("eof" after a complete body, else the error), for the behaviours
// that read the body.
type faultUpstream struct {
	ln      net.Listener
	arrived chan string
	ended   chan string
	release chan struct{} // closed when the test ends: hung handlers return
	late    chan struct{} // closed by a test: /answer-late answers
	wg      sync.WaitGroup
	conns   sync.Map // net.Conn -> struct{}, to close them all on stop
}

func newFaultUpstream(t *testing.T) *faultUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &faultUpstream{
		ln:      ln,
		arrived: make(chan string, 256),
		ended:   make(chan string, 256),
		release: make(chan struct{}),
		late:    make(chan struct{}),
	}
	u.wg.Add(1)
	go u.serve()
	t.Cleanup(func() {
		close(u.release)
		ln.Close()
		u.conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
		u.wg.Wait()
	})
	return u
}

func (u *faultUpstream) URL() string { return "http://" + u.ln.Addr().String() }

func (u *faultUpstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.conns.Store(c, struct{}{})
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer u.conns.Delete(c)
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				select {
				case u.arrived <- req.URL.Path:
				default:
				}
				if !u.answer(c, req) {
					return
				}
			}
		}()
	}
}

// answer acts out the behaviour the path names and reports whether the
// connection may serve another request.
func (u *faultUpstream) answer(c net.Conn, req *http.Request) bool {
	hang := func() { <-u.release }
	reset := func() {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST, not FIN
		}
		c.Close()
	}
	switch path := req.URL.Path; path {
	case "/close-before-headers":
		c.Close()
		return false
	case "/reset-before-headers":
		reset()
		return false
	case "/hang-before-headers":
		hang()
		return false
	case "/answer-late":
		select {
		case <-u.late:
		case <-u.release:
			return false
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
		return true
	case "/reset-mid-body":
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")
		reset()
		return false
	case "/hang-mid-body":
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")
		hang()
		return false
	case "/stop-reading":
		// Takes the head, then never reads the body.
		hang()
		return false
	case "/stream":
		// An endless chunked body, until the write fails.
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		chunk := "400\r\n" + strings.Repeat("x", 0x400) + "\r\n"
		for {
			if _, err := io.WriteString(c, chunk); err != nil {
				u.ended <- path + ": write failed"
				return false
			}
			select {
			case <-u.release:
				return false
			default:
			}
		}
	case "/upload", "/hang-before-headers-after-body":
		n, err := io.Copy(io.Discard, req.Body)
		how := "eof"
		if err != nil {
			how = "error after " + strconv.FormatInt(n, 10) + " bytes"
		}
		u.ended <- path + ": " + how
		if err != nil {
			return false
		}
		if path == "/hang-before-headers-after-body" {
			// Watches the connection: a read ends when lanegate closes it.
			c.Read(make([]byte, 1))
			u.ended <- path + ": connection closed"
			return false
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d", len(strconv.FormatInt(n, 10)), n)
		return true
	default:
		io.Copy(io.Discard, req.Body)
		body := "ok " + path
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return true
	}
}

// faultEnv is lanegate's environment for the fault tests: timeouts short
// enough to be reached in a test, long enough for the race detector.
func faultEnv(upstream string, extra ...string) []string {
	return environ(upstream, append([]string{
		"LANEGATE_UPSTREAM_RESPONSE_HEADER_TIMEOUT=500ms",
		"LANEGATE_UPSTREAM_STALL_TIMEOUT=500ms",
		"LANEGATE_UPSTREAM_TIMEOUT_HOLD=0",
		"LANEGATE_ACCESS_LOG=false",
	}, extra...)...)
}

// waitIdle polls /status until nothing is in flight or queued.
func waitIdle(ctx context.Context, t *testing.T, c *http.Client, in *instance) admin.Status {
	t.Helper()
	return pollStatus(ctx, t, c, in, "nothing in flight or queued", func(st admin.Status) bool {
		if st.InFlight != 0 {
			return false
		}
		for _, l := range st.Lanes {
			if l.InFlight != 0 || l.Queued != 0 {
				return false
			}
		}
		return true
	})
}

// upstreamErrors reads lanegate_upstream_errors_total by kind.
func upstreamErrors(ctx context.Context, t *testing.T, c *http.Client, in *instance) map[string]int {
	t.Helper()
	r := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET /metrics: got %d, error %v", r.status, r.err)
	}
	kinds := map[string]int{}
	for _, line := range strings.Split(r.body, "\n") {
		rest, ok := strings.CutPrefix(line, `lanegate_upstream_errors_total{kind="`)
		if !ok {
			continue
		}
		kind, val, _ := strings.Cut(rest, `"} `)
		n, _ := strconv.ParseFloat(val, 64)
		kinds[kind] = int(n)
	}
	return kinds
}

func TestFaultUpstream(t *testing.T) {
	ctx := testContext(t)
	up := newFaultUpstream(t)
	in := start(ctx, t, faultEnv(up.URL()))
	c := newClient(t)

	tests := []struct {
		path   string
		status int    // 0: the client sees the headers and then an error
		body   string // with status 0, the bytes the client got
		kind   string // lanegate_upstream_errors_total kind
	}{
		{"/close-before-headers", http.StatusBadGateway, "upstream failed\n", "failed"},
		{"/reset-before-headers", http.StatusBadGateway, "upstream failed\n", "failed"},
		{"/hang-before-headers", http.StatusGatewayTimeout, "upstream timed out\n", "timeout"},
		{"/reset-mid-body", 0, "first part", "body_failed"},
		{"/hang-mid-body", 0, "first part", "body_timeout"},
	}
	for _, tt := range tests {
		t.Run(strings.TrimPrefix(tt.path, "/"), func(t *testing.T) {
			before := upstreamErrors(ctx, t, c, in)
			r := do(ctx, c, http.MethodGet, in.proxyURL(tt.path), "")
			if tt.status != 0 {
				if r.err != nil || r.status != tt.status || r.body != tt.body {
					t.Errorf("got %d %q, error %v; want %d %q", r.status, r.body, r.err, tt.status, tt.body)
				}
			} else if r.status != http.StatusOK || r.err == nil || r.body != tt.body {
				t.Errorf("got %d %q, error %v; want 200, %q and then an error", r.status, r.body, r.err, tt.body)
			}
			waitIdle(ctx, t, c, in)
			if got := upstreamErrors(ctx, t, c, in)[tt.kind] - before[tt.kind]; got != 1 {
				t.Errorf("upstream errors of kind %s: got %d more, want 1", tt.kind, got)
			}
		})
	}

	t.Run("stops reading an upload", func(t *testing.T) {
		// Far more than the socket buffers between the three hold.
		body := io.LimitReader(zeros{}, 64<<20)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, in.proxyURL("/stop-reading"), body)
		req.ContentLength = 64 << 20
		resp, err := c.Do(req)
		switch {
		case err != nil:
			// The client may still be writing when the answer comes and
			// the connection closes; it was told either way.
			if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "broken pipe") {
				t.Errorf("got error %v, want a 504 or a closed connection", err)
			}
		default:
			resp.Body.Close()
			if resp.StatusCode != http.StatusGatewayTimeout {
				t.Errorf("got %d, want 504", resp.StatusCode)
			}
		}
		waitIdle(ctx, t, c, in)
	})

	t.Run("refused", func(t *testing.T) {
		dead := newFaultUpstream(t)
		dead.ln.Close()
		in := start(ctx, t, faultEnv(dead.URL()))
		r := do(ctx, c, http.MethodGet, in.proxyURL("/page"), "", "Accept", "application/json")
		if r.err != nil || r.status != http.StatusBadGateway || r.body != `{"error":"upstream refused the connection"}`+"\n" {
			t.Errorf("got %d %q, error %v; want 502 in JSON", r.status, r.body, r.err)
		}
		waitIdle(ctx, t, c, in)
		if got := upstreamErrors(ctx, t, c, in)["refused"]; got != 1 {
			t.Errorf("upstream errors of kind refused: got %d, want 1", got)
		}
	})

	// After every fault, the upstream's healthy paths work on the same
	// lanegate: no slot, connection or state was lost.
	if r := do(ctx, c, http.MethodGet, in.proxyURL("/after"), ""); r.err != nil || r.status != http.StatusOK || r.body != "ok /after" {
		t.Errorf("request after the faults: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	st := waitIdle(ctx, t, c, in)
	if core := st.Lanes["core"]; core.Admitted != uint64(len(tests)+2) {
		t.Errorf("core requests admitted: got %d, want %d", core.Admitted, len(tests)+2)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestFaultTimeoutHoldsSlot: after a 504 the app may still work on the
// request, holding its database connection; its slot stays taken until
// the app's late answer arrives, so no other request is sent in to wait in
// the app's pool meanwhile.
func TestFaultTimeoutHoldsSlot(t *testing.T) {
	ctx := testContext(t)
	up := newFaultUpstream(t)
	in := start(ctx, t, faultEnv(up.URL(), "LANEGATE_BUDGET=1", "LANEGATE_UPSTREAM_TIMEOUT_HOLD=20s"))
	c := newClient(t)

	r := do(ctx, c, http.MethodGet, in.proxyURL("/answer-late"), "")
	if r.err != nil || r.status != http.StatusGatewayTimeout {
		t.Fatalf("got %d %q, error %v; want 504", r.status, r.body, r.err)
	}
	if st := status(ctx, t, c, in); st.InFlight != 1 {
		t.Fatalf("in flight after the 504: got %d, want the slot still held", st.InFlight)
	}
	next := goGet(ctx, c, in.proxyURL("/next"))
	pollStatus(ctx, t, c, in, "the next request queued behind the held slot", func(st admin.Status) bool {
		return st.Lanes["core"].Queued == 1
	})
	notYet(t, next, "the request queued behind the held slot")
	close(up.late) // the app finishes the request it was given up on
	if r := recv(ctx, t, next, "the next request"); r.err != nil || r.status != http.StatusOK || r.body != "ok /next" {
		t.Errorf("next request: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	waitIdle(ctx, t, c, in)
}

// TestFaultClientLeaveHoldsSlot: a client that gives up on a request the
// app is working on does not free its slot either: the app goes on holding
// its database connection until it answers, and a slot freed at the
// client's leaving would send another request in to wait in the pool.
func TestFaultClientLeaveHoldsSlot(t *testing.T) {
	ctx := testContext(t)
	up := newFaultUpstream(t)
	in := start(ctx, t, faultEnv(up.URL(), "LANEGATE_BUDGET=1", "LANEGATE_UPSTREAM_TIMEOUT_HOLD=20s",
		"LANEGATE_UPSTREAM_RESPONSE_HEADER_TIMEOUT=20s"))
	c := newClient(t)

	rctx, leave := context.WithCancel(ctx)
	gone := goGet(rctx, c, in.proxyURL("/answer-late"))
	pollStatus(ctx, t, c, in, "the request in flight", func(st admin.Status) bool { return st.InFlight == 1 })
	leave()
	if r := recv(ctx, t, gone, "the abandoned request"); r.err == nil {
		t.Fatalf("abandoned request: got %d, want the client's own cancellation", r.status)
	}
	next := goGet(ctx, c, in.proxyURL("/next"))
	pollStatus(ctx, t, c, in, "the next request queued behind the held slot", func(st admin.Status) bool {
		return st.Lanes["core"].Queued == 1 && st.InFlight == 1
	})
	notYet(t, next, "the request queued behind the held slot")
	close(up.late) // the app finishes the request its client gave up on
	if r := recv(ctx, t, next, "the next request"); r.err != nil || r.status != http.StatusOK || r.body != "ok /next" {
		t.Errorf("next request: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	waitIdle(ctx, t, c, in)
}

// TestFaultUpstreamRestart stops the upstream under concurrent load and
// starts it again on the same address: every request is answered, 200 or
// 502, and traffic recovers without touching lanegate.
func TestFaultUpstreamRestart(t *testing.T) {
	ctx := testContext(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	serve := func(ln net.Listener) *http.Server {
		s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok")
		})}
		go s.Serve(ln)
		return s
	}
	srv := serve(ln)
	defer func() { srv.Close() }()
	in := start(ctx, t, faultEnv("http://"+addr, "LANEGATE_BUDGET=4"))
	c := newClient(t)

	// phase: 0 before the stop, 1 while stopped, 2 after the restart, 3
	// for a request that began in one phase and ended in another.
	var phase atomic.Int32
	type tally struct{ ok, badGateway int }
	var (
		mu     sync.Mutex
		counts [4]tally
		errs   []error
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				began := phase.Load()
				method := http.MethodGet
				if (i+n)%3 == 0 {
					method = http.MethodPost
				}
				r := do(ctx, c, method, in.proxyURL("/page"), "x=1")
				p := phase.Load()
				if p != began {
					p = 3
				}
				mu.Lock()
				switch {
				case r.err != nil:
					errs = append(errs, r.err)
				case r.status == http.StatusOK && r.body == "ok":
					counts[p].ok++
				case r.status == http.StatusBadGateway:
					counts[p].badGateway++
				default:
					errs = append(errs, fmt.Errorf("status %d %q", r.status, r.body))
				}
				mu.Unlock()
			}
		}()
	}
	waitCount := func(what string, cond func(c [4]tally) bool) {
		t.Helper()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			mu.Lock()
			ok := cond(counts)
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("waiting for %s: %v; counts %+v", what, ctx.Err(), counts)
			}
		}
	}
	waitCount("traffic before the stop", func(c [4]tally) bool { return c[0].ok >= 50 })
	phase.Store(1)
	srv.Close() // closes the listener and every connection, mid-request or idle
	waitCount("502s while the upstream is down", func(c [4]tally) bool { return c[1].badGateway >= 20 })
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("restarting the upstream on %s: %v", addr, err)
	}
	phase.Store(2)
	srv = serve(ln)
	waitCount("traffic after the restart", func(c [4]tally) bool { return c[2].ok >= 50 })
	close(stop)
	wg.Wait()

	if len(errs) > 0 {
		t.Errorf("requests not answered with 200 or 502: %d, first: %v", len(errs), errs[0])
	}
	// Requests that straddle a stop or restart may end either way; the
	// others must end as their phase says.
	if c := counts[0]; c.badGateway > 0 {
		t.Errorf("502s before the upstream stopped: got %d, want 0", c.badGateway)
	}
	if c := counts[1]; c.ok > 0 {
		t.Errorf("200s while the upstream was down: got %d, want 0", c.ok)
	}
	if c := counts[2]; c.badGateway > 0 {
		t.Errorf("502s after the upstream restarted: got %d, want 0", c.badGateway)
	}
	st := waitIdle(ctx, t, c, in)
	if st.InFlight != 0 {
		t.Errorf("in flight after the restart: got %d, want 0", st.InFlight)
	}
	t.Logf("before %+v, down %+v, after %+v, across a change %+v", counts[0], counts[1], counts[2], counts[3])
}

// TestFaultClientLeaves: a client that goes away at any stage frees its
// slot at once, and nothing of its request reaches the upstream after it
// left.
func TestFaultClientLeaves(t *testing.T) {
	ctx := testContext(t)
	up := newFaultUpstream(t)
	in := start(ctx, t, faultEnv(up.URL(),
		"LANEGATE_BUDGET=1",
		"LANEGATE_UPSTREAM_RESPONSE_HEADER_TIMEOUT=20s",
		"LANEGATE_UPSTREAM_STALL_TIMEOUT=20s",
	))
	c := newClient(t)

	t.Run("while queued", func(t *testing.T) {
		hold, release := context.WithCancel(ctx)
		held := make(chan result, 1)
		go func() { held <- do(hold, c, http.MethodGet, in.proxyURL("/hang-before-headers"), "") }()
		if p := recv(ctx, t, up.arrived, "the request holding the only slot"); p != "/hang-before-headers" {
			t.Fatalf("upstream got %s, want /hang-before-headers", p)
		}
		qctx, leave := context.WithCancel(ctx)
		queued := make(chan result, 1)
		go func() { queued <- do(qctx, c, http.MethodGet, in.proxyURL("/queued"), "") }()
		pollStatus(ctx, t, c, in, "one queued request", func(st admin.Status) bool { return st.Lanes["core"].Queued == 1 })
		leave()
		if r := recv(ctx, t, queued, "the queued client"); r.err == nil {
			t.Errorf("queued client: got %d, want its own cancellation", r.status)
		}
		// The waiter leaves the queue, and then its decision is counted:
		// a read between sees neither, so wait for both.
		st := pollStatus(ctx, t, c, in, "the queue to empty and the cancellation counted", func(st admin.Status) bool {
			return st.Lanes["core"].Queued == 0 && st.Lanes["core"].Decisions["cancelled"] >= 1
		})
		if got := st.Lanes["core"].Decisions["cancelled"]; got != 1 {
			t.Errorf("cancelled decisions: got %d, want 1", got)
		}
		release()
		recv(ctx, t, held, "the holding client")
		waitIdle(ctx, t, c, in)
		// The next request takes the slot; the cancelled one never
		// reached the upstream.
		if r := do(ctx, c, http.MethodGet, in.proxyURL("/next"), ""); r.status != http.StatusOK {
			t.Errorf("next request: got %d %v, want 200", r.status, r.err)
		}
		if p := recv(ctx, t, up.arrived, "the next request"); p != "/next" {
			t.Errorf("upstream got %s after the cancelled one, want /next", p)
		}
	})

	t.Run("while waiting for headers", func(t *testing.T) {
		wctx, leave := context.WithCancel(ctx)
		waiting := make(chan result, 1)
		go func() {
			waiting <- do(wctx, c, http.MethodPost, in.proxyURL("/hang-before-headers-after-body"), "a complete body")
		}()
		recv(ctx, t, up.arrived, "the request at the upstream")
		if e := recv(ctx, t, up.ended, "the body at the upstream"); e != "/hang-before-headers-after-body: eof" {
			t.Fatalf("upstream: %s, want the complete body", e)
		}
		pollStatus(ctx, t, c, in, "the request in flight", func(st admin.Status) bool { return st.InFlight == 1 })
		leave()
		recv(ctx, t, waiting, "the client that left")
		// lanegate closes its upstream connection: the app sees it.
		if e := recv(ctx, t, up.ended, "the upstream connection to close"); e != "/hang-before-headers-after-body: connection closed" {
			t.Errorf("upstream: %s, want its connection closed", e)
		}
		waitIdle(ctx, t, c, in)
	})

	t.Run("while the response body streams", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.proxyURL("/stream"), nil)
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("stream: got %v, %v; want 200", resp, err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		pollStatus(ctx, t, c, in, "the stream in flight", func(st admin.Status) bool { return st.InFlight == 1 })
		resp.Body.Close() // an unfinished body: the client closes the connection
		if e := recv(ctx, t, up.ended, "the upstream's write to fail"); e != "/stream: write failed" {
			t.Errorf("upstream: %s, want its write to fail", e)
		}
		waitIdle(ctx, t, c, in)
	})

	t.Run("while the request body streams", func(t *testing.T) {
		pr, pw := io.Pipe()
		uctx, leave := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(uctx, http.MethodPost, in.proxyURL("/upload"), pr)
		req.ContentLength = 1 << 20
		done := make(chan error, 1)
		go func() {
			resp, err := c.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		if _, err := pw.Write(make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		recv(ctx, t, up.arrived, "the upload at the upstream")
		pollStatus(ctx, t, c, in, "the upload in flight", func(st admin.Status) bool { return st.InFlight == 1 })
		leave()
		pw.CloseWithError(context.Canceled)
		if err := recv(ctx, t, done, "the client that left"); err == nil {
			t.Errorf("client: got a response, want its own cancellation")
		}
		// The app never sees a complete body: it would act on half a form.
		e := recv(ctx, t, up.ended, "the upload's end at the upstream")
		if !strings.HasPrefix(e, "/upload: error after ") {
			t.Errorf("upstream: %s, want the body cut short with an error", e)
		}
		waitIdle(ctx, t, c, in)
	})

	if r := do(ctx, c, http.MethodGet, in.proxyURL("/last"), ""); r.err != nil || r.status != http.StatusOK {
		t.Errorf("request after the clients left: got %d %v, want 200", r.status, r.err)
	}
}

// TestFaultShutdownDuringStorm: on SIGTERM with every lane's slots busy
// and requests queued in each, the queued ones get 503 with Retry-After at
// once, and the ones in flight finish.
func TestFaultShutdownDuringStorm(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	in := start(ctx, t, environ(up.URL,
		// Reservations that add up to the budget: each lane has exactly
		// its own slots, so which requests wait does not depend on
		// which arrives first.
		"LANEGATE_BUDGET=4",
		"LANEGATE_CORE_RESERVED=2",
		"LANEGATE_LOGIN_RESERVED=1",
		"LANEGATE_EXPORT_RESERVED=1",
		"LANEGATE_EXPORT_QUEUE=4",
		"LANEGATE_LOGIN_PATHS=/slow/login/",
		"LANEGATE_EXPORT_PATHS=/slow/export/",
		"LANEGATE_CORE_QUEUE_TIMEOUT=20s",
		"LANEGATE_EXPORT_QUEUE_TIMEOUT=20s",
		"LANEGATE_LOGIN_MAX_HOLD=20s",
		"LANEGATE_WAITING_ROOM=false",
	))
	c := newClient(t)

	// Three of each lane: more than the budget of 4 admits, so some wait.
	type answer struct {
		path string
		r    result
	}
	done := make(chan answer, 9)
	for i := range 3 {
		for _, p := range []string{"/slow/core/", "/slow/login/", "/slow/export/"} {
			path := p + strconv.Itoa(i)
			method := http.MethodGet
			if p == "/slow/login/" {
				method = http.MethodPost // only a login POST is the login lane's
			}
			go func() { done <- answer{path, do(ctx, c, method, in.proxyURL(path), "login=x")} }()
		}
	}
	st := pollStatus(ctx, t, c, in, "every request admitted or queued", func(st admin.Status) bool {
		n := st.InFlight
		for _, l := range st.Lanes {
			n += l.Queued
		}
		return n == cap(done) && st.InFlight == st.Budget
	})
	for range st.InFlight {
		recv(ctx, t, up.arrived, "a request in flight")
	}
	for _, name := range []string{"core", "login", "export"} {
		if l := st.Lanes[name]; l.InFlight+l.Queued != 3 || l.Queued == 0 {
			t.Errorf("lane %s before the shutdown: %d in flight, %d queued; want 3 in all, some queued", name, l.InFlight, l.Queued)
		}
	}

	in.cancel() // what SIGTERM does
	// The queued are answered while the upstream still holds the others.
	for range cap(done) - st.InFlight {
		a := recv(ctx, t, done, "a queued request's answer")
		if a.r.err != nil || a.r.status != http.StatusServiceUnavailable || a.r.header.Get("Retry-After") == "" {
			t.Errorf("%s queued at shutdown: got %d, Retry-After %q, error %v; want 503 with Retry-After",
				a.path, a.r.status, a.r.header.Get("Retry-After"), a.r.err)
		}
	}
	notYet(t, done, "the requests in flight before the upstream answers")
	up.unblock()
	for range st.InFlight {
		a := recv(ctx, t, done, "a request in flight")
		if a.r.err != nil || a.r.status != http.StatusOK || a.r.body != "slow "+a.path {
			t.Errorf("%s in flight at shutdown: got %d %q, error %v; want 200", a.path, a.r.status, a.r.body, a.r.err)
		}
	}
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run: got %v, want nil", err)
	}
	if n := len(up.seen); n != st.InFlight {
		t.Errorf("upstream got %d requests, want the %d in flight only", n, st.InFlight)
	}
}
