package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/internal/nettest"
	"github.com/lanegate/lanegate/metrics"
)

// bigResponse is larger than loopback's socket buffers absorb (a few MB
// each side), so a client that never reads leaves a relaying proxy
// blocked on its write.
const bigResponse = 12 << 20

// testBigUpstream answers GET /big with bigResponse bytes, with a
// Content-Length, or chunked for /big-chunked, and GET /small with "ok".
func testBigUpstream(t testing.TB) *httptest.Server {
	body := strings.Repeat("0123456789abcdef", bigResponse/16)
	return testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			io.WriteString(w, body)
		case "/big-chunked":
			for i := 0; i < len(body); i += 1 << 20 {
				io.WriteString(w, body[i:i+1<<20])
				w.(http.Flusher).Flush()
			}
		default:
			io.WriteString(w, "ok")
		}
	}))
}

// testNewProxyListener serves a handler under limits through a proxy
// Listener with opts, as lanegate itself does.
func testNewProxyListener(t testing.TB, upstream string, limits admission.Limits, opts Options, lopts ListenerOptions) (*testProxy, *Listener) {
	t.Helper()
	p := testNewParts(t, upstream, limits, opts)
	h, err := New(p.Ctrl, p.Opts, p.Log, p.Metrics)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if lopts.MaxConns == 0 {
		lopts.MaxConns = 1000
	}
	pl := NewListener(smallSendBuffers{ln}, lopts)
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = pl
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		h.Close()
	})
	c := srv.Client()
	c.Timeout = 3 * testTimeout
	return &testProxy{Ctrl: p.Ctrl, Handler: h, Server: srv, Client: c, Reg: p.Reg, Metrics: p.Metrics, Logs: p.Logs}, pl
}

// smallSendBuffers pins each accepted connection's send buffer at 32 KiB:
// on loopback, with its 64 KiB segments, the kernel would otherwise let it
// grow to megabytes, where a real network's MSS keeps it to tens of KB.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(32 << 10)
	}
	return c, err
}

// testStalledGet sends GET path on a connection of its own and reads
// nothing back. Its receive buffer is pinned at 8 KiB, as a phone on a bad
// network absorbs little. The connection closes when the test ends.
func testStalledGet(t testing.TB, addr, path string) net.Conn {
	t.Helper()
	c, err := nettest.DialNarrow(addr, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: lanegate.test\r\n\r\n", path)
	return c
}

// A response that fits the buffer frees its slot as soon as the app is
// done, while a client that reads nothing still holds its connection.
func TestResponseBufferFreesSlotBeforeClientReads(t *testing.T) {
	for _, path := range []string{"/big", "/big-chunked"} {
		t.Run(path, func(t *testing.T) {
			up := testBigUpstream(t)
			p := testNewProxy(t, up.URL, testLimits(), Options{ResponseBufferBytes: 16 << 20, ResponseBufferTotalBytes: 64 << 20})
			c := testStalledGet(t, p.Server.Listener.Addr().String(), path)
			testWaitFor(t, "the buffered response's slot released while its client reads nothing", func() bool {
				return p.Ctrl.Snapshot().InFlight == 0 && p.Ctrl.Snapshot().Lanes[admission.Core].Decisions[admission.Admitted] == 1
			})
			// The client still gets every byte, in order, when it reads.
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("reading the response late: %v", err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != bigResponse {
				t.Errorf("late read: got %d bytes, %v; want %d", n, err, bigResponse)
			}
			testWaitFor(t, "buffer memory given back", func() bool { return p.Handler.buffers.InUse() == 0 })
		})
	}
}

// Without a buffer large enough, a client that reads nothing holds the
// slot (as before), until the send timeout cuts it.
func TestSendTimeoutFreesSlotOfUnbufferedResponse(t *testing.T) {
	up := testBigUpstream(t)
	p, ln := testNewProxyListener(t, up.URL, testLimits(), Options{ResponseBufferBytes: 1 << 20, ResponseBufferTotalBytes: 64 << 20},
		ListenerOptions{SendTimeout: 300 * time.Millisecond})
	testStalledGet(t, p.Server.Listener.Addr().String(), "/big")
	testWaitFor(t, "the request admitted", func() bool {
		return p.Ctrl.Snapshot().Lanes[admission.Core].Decisions[admission.Admitted] == 1
	})
	testWaitIdle(t, p.Ctrl)
	if got := ln.SendTimeouts(); got != 1 {
		t.Errorf("SendTimeouts: got %d, want 1", got)
	}
	if _, large := testOverflows(p); large != 1 {
		t.Errorf("too_large overflows: got %d, want 1 (12 MiB past a 1 MiB buffer)", large)
	}
	m := testParseMetrics(t, testGather(t, p))
	if m[`lanegate_response_buffer_overflows_total{reason="too_large"}`] != 1 {
		t.Errorf("lanegate_response_buffer_overflows_total{reason=too_large}: got %v, want 1", m[`lanegate_response_buffer_overflows_total{reason="too_large"}`])
	}
	// A client that reads keeps being served.
	res := testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/small", nil, nil)
	testStatus(t, res, http.StatusOK)
}

func testOverflows(p *testProxy) (full, large uint64) {
	large, full = p.Handler.buffers.Overflows()
	return full, large
}

// An event stream is never held back by buffering, nor is a response the
// app asks not to buffer.
func TestResponseBufferNeverDelaysStreams(t *testing.T) {
	for _, tc := range []struct{ name, header, value string }{
		{"event-stream", "Content-Type", "text/event-stream"},
		{"x-accel-buffering", "X-Accel-Buffering", "no"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set(tc.header, tc.value)
				io.WriteString(w, "data: first\n\n")
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			defer close(release)
			p := testNewProxy(t, up.URL, testLimits(), Options{ResponseBufferBytes: 1 << 20, ResponseBufferTotalBytes: 64 << 20})
			resp, first := testFirstBytes(t, p.Client, p.Server.URL+"/events", len("data: first\n\n"))
			if first != "data: first\n\n" {
				t.Errorf("first event: got %q", first)
			}
			if v := resp.Header.Get("X-Accel-Buffering"); v != "" {
				t.Errorf("X-Accel-Buffering reached the client: %q, want it kept between the app and lanegate", v)
			}
			if got := p.Ctrl.Snapshot().InFlight; got != 1 {
				t.Errorf("in flight while the stream is open: got %d, want 1 (an unbuffered stream holds its slot)", got)
			}
		})
	}
}

// Past the total, responses are relayed unbuffered rather than refused.
func TestResponseBufferTotalRelaysUnbuffered(t *testing.T) {
	up := testBigUpstream(t)
	p := testNewProxy(t, up.URL, testLimits(), Options{ResponseBufferBytes: 16 << 20, ResponseBufferTotalBytes: 16 << 20})
	testStalledGet(t, p.Server.Listener.Addr().String(), "/big")
	testWaitFor(t, "the first response buffered and its slot freed", func() bool {
		s := p.Ctrl.Snapshot()
		return s.InFlight == 0 && s.Lanes[admission.Core].Decisions[admission.Admitted] == 1
	})
	// The second does not fit beside the first: relayed as it comes.
	res := testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/big", nil, nil)
	testStatus(t, res, http.StatusOK)
	if len(res.Body) != bigResponse {
		t.Errorf("second response: got %d bytes, want %d", len(res.Body), bigResponse)
	}
	if full, _ := testOverflows(p); full != 1 {
		t.Errorf("full overflows: got %d, want 1", full)
	}
}

// The buffered path costs no allocation a relayed response does not.
func BenchmarkHandlerBuffered(b *testing.B) {
	up := testUpstream(b, testOK)
	u, _ := url.Parse(up.URL)
	ctrl, err := admission.New(testLimits())
	if err != nil {
		b.Fatal(err)
	}
	h, err := New(ctrl, Options{Upstream: u, Rules: testProxyRules, IdleConns: 256, ResponseBufferBytes: 1 << 20, ResponseBufferTotalBytes: 64 << 20}, zap.NewNop(), (*metrics.Registry)(nil))
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	testBenchServe(b, h)
}

// BenchmarkResponseBufferWorstCase measures the heap that buffered
// responses hold at the default limits (1 MiB each, 128 MiB together) when
// clients that read nothing ask for more than the total: 160 responses of
// 1 MiB. The bound is the total; past it responses are relayed unbuffered
// and hold their slots instead. Run with -benchtime=1x.
func BenchmarkResponseBufferWorstCase(b *testing.B) {
	body := strings.Repeat("x", 1<<20)
	up := testUpstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	}))
	const clients = 160
	for b.Loop() {
		lim := testLimits()
		lim.Budget = clients
		for _, l := range admission.Lanes() {
			lim.Lane[l].Max = clients
		}
		p, _ := testNewProxyListener(b, up.URL, lim, Options{ResponseBufferBytes: 1 << 20, ResponseBufferTotalBytes: 128 << 20}, ListenerOptions{})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var conns []net.Conn
		for range clients {
			conns = append(conns, testStalledGet(b, p.Server.Listener.Addr().String(), "/"))
		}
		testWaitFor(b, "every response buffered or relaying", func() bool {
			s := p.Ctrl.Snapshot()
			return s.Lanes[admission.Core].Decisions[admission.Admitted] == clients
		})
		testWaitFor(b, "the buffers full", func() bool {
			_, full := p.Handler.buffers.Overflows()
			return p.Handler.buffers.InUse() > 120<<20 && full > 0
		})
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(p.Handler.buffers.InUse())/(1<<20), "buffered-MiB")
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(p.Ctrl.Snapshot().InFlight), "slots-held")
		for _, c := range conns {
			c.Close()
		}
	}
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream":                true,
		"Text/Event-Stream; charset=utf-8": true,
		" text/event-stream":               true,
		"text/html; charset=utf-8":         false,
		"text/event":                       false,
		"":                                 false,
	} {
		if got := isEventStream(ct); got != want {
			t.Errorf("isEventStream(%q) = %v, want %v", ct, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { isEventStream("Text/HTML; charset=UTF-8") }); n != 0 {
		t.Errorf("isEventStream allocates %v times per call, want 0", n)
	}
}
