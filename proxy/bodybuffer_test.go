package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// The defaults of LANEGATE_BUFFER_BODY_BYTES, LANEGATE_MAX_BODY_BYTES and
// LANEGATE_BODY_READ_TIMEOUT, which the memory figures are measured at.
const (
	testDefaultBufferBody = 64 << 10
	testDefaultMaxBody    = 64 << 20
	testDefaultBodyRead   = 30 * time.Second
)

// testDefaultBodyOptions are the handler's body options at lanegate's
// defaults.
func testDefaultBodyOptions() Options {
	return Options{
		BufferBodyBytes: testDefaultBufferBody,
		MaxBodyBytes:    testDefaultMaxBody,
		BodyReadTimeout: testDefaultBodyRead,
	}
}

// testReadingBody tells when the handler first reads a request's body:
// by then, whatever it allocated to read the body into is allocated.
type testReadingBody struct {
	io.ReadCloser
	reading chan<- struct{}
	once    bool
}

func (b *testReadingBody) Read(p []byte) (int, error) {
	if !b.once {
		b.once = true
		b.reading <- struct{}{}
	}
	return b.ReadCloser.Read(p)
}

// testPendingMemory holds n requests that announce a body of
// Content-Length announce and send nothing of it, on a handler built with
// opts, and returns the live heap and the goroutine stacks they add, per
// request: what a client can pin for the price of a connection.
func testPendingMemory(t testing.TB, n int, announce int64, opts Options) testMemory {
	t.Helper()
	gate := testNewGate()
	defer gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testLimits(), opts)
	reading := make(chan struct{}, n)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = &testReadingBody{ReadCloser: r.Body, reading: reading}
		p.Handler.ServeHTTP(w, r)
	}))
	defer srv.Close()

	before := testLiveMemory()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	head := fmt.Sprintf("POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", announce)
	for range n {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatalf("sending headers: %v", err)
		}
	}
	for i := range n {
		select {
		case <-reading:
		case <-time.After(testTimeout):
			t.Fatalf("%d of %d requests reached their body within %s", i, n, testTimeout)
		}
	}
	after := testLiveMemory()
	return testMemory{
		Heap:  float64(after.Heap-before.Heap) / float64(n),
		Stack: float64(after.Stack-before.Stack) / float64(n),
	}
}

// testMemory is memory in bytes: the heap live after a collection, and
// goroutine stacks.
type testMemory struct{ Heap, Stack float64 }

// testLiveMemory is what is held now, without the garbage.
func testLiveMemory() testMemory {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return testMemory{Heap: float64(ms.HeapAlloc), Stack: float64(ms.StackInuse)}
}

// A request that announces the largest body buffered before admission and
// sends none of it costs the memory of its connection, not of the body it
// announced: buffers grow as bytes arrive. Sized from Content-Length, 10,000
// such connections (LANEGATE_MAX_CONNS) would pin 640 MB.
func TestBufferedBodyPendingMemory(t *testing.T) {
	const n = 500
	m := testPendingMemory(t, n, testDefaultBufferBody, testDefaultBodyOptions())
	per := m.Heap + m.Stack
	t.Logf("%d requests announcing %d bytes and sending none: %.0f bytes each (%.0f heap, %.0f stacks; both ends of the connection)", n, testDefaultBufferBody, per, m.Heap, m.Stack)
	// A connection costs the server and this test's client a few KiB of
	// buffers and stacks; a body's worth more means the body's buffer was
	// sized from its Content-Length.
	if limit := float64(testDefaultBufferBody) / 2; per > limit {
		t.Errorf("memory per pending request: got %.0f bytes, want under %.0f", per, limit)
	}
}

// BenchmarkBufferedBodyPending measures the worst case at lanegate's
// defaults: connections that announce the largest body buffered before
// admission and send none of it. heap-B/pending is the live heap each
// holds, both ends of the connection included; stack-B/pending its
// goroutines' stacks. Run it with -benchtime=1x: later iterations reuse
// the stacks of goroutines that ended and net/http's pooled buffers, and
// measure less.
func BenchmarkBufferedBodyPending(b *testing.B) {
	const n = 1000
	var total testMemory
	for b.Loop() {
		m := testPendingMemory(b, n, testDefaultBufferBody, testDefaultBodyOptions())
		total.Heap += m.Heap
		total.Stack += m.Stack
	}
	b.ReportMetric(total.Heap/float64(b.N), "heap-B/pending")
	b.ReportMetric(total.Stack/float64(b.N), "stack-B/pending")
}

// Bodies of every size around the buffer's doublings reach the upstream
// whole and in order.
func TestBufferedBodyGrowsIntact(t *testing.T) {
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testLimits(), testDefaultBodyOptions())
	for _, size := range []int{1, bodyBufferStart - 1, bodyBufferStart, bodyBufferStart + 1, 4096, 4097, 40000, testDefaultBufferBody - 1, testDefaultBufferBody} {
		body := make([]byte, size)
		for i := range body {
			body[i] = byte('a' + i%26)
		}
		res := testFetch(t, p.Client, http.MethodPost, p.Server.URL+"/form", nil, bytes.NewReader(body))
		testStatus(t, res, http.StatusOK)
		if got := testAwait(t, gate).Body; !bytes.Equal(got, body) {
			t.Errorf("%d-byte body: upstream got %d bytes, want it whole", size, len(got))
		}
	}
}

// testBuffered is lanegate_buffered_body_bytes as scraped now.
func testBuffered(t *testing.T, p *testProxy) float64 {
	t.Helper()
	v, ok := testParseMetrics(t, testGather(t, p))["lanegate_buffered_body_bytes"]
	if !ok {
		t.Fatal("metrics: got no lanegate_buffered_body_bytes, want the memory of buffered bodies")
	}
	return v
}

// testWaitBuffered waits until bodies read before admission hold want
// bytes.
func testWaitBuffered(t *testing.T, p *testProxy, want float64) {
	t.Helper()
	testWaitFor(t, fmt.Sprintf("buffered bodies to hold %.0f bytes", want), func() bool { return testBuffered(t, p) == want })
}

// testBody is a body of n bytes a test can tell from any other of its
// length.
func testBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// Requests that announce a large body and send none of it hold no more
// than LANEGATE_BUFFER_BODY_TOTAL_BYTES between them, however many they
// are. Those finding no room stream, as larger bodies do: they are
// admitted, and every body, buffered in part or streamed, reaches the
// upstream whole.
func TestBufferedBodyTotalBound(t *testing.T) {
	const (
		n        = 30
		fit      = 10 // start buffers the bound has room for
		bound    = fit*bodyBufferStart + bodyBufferStart/2
		announce = testDefaultBufferBody
	)
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, gate)
	opts := testDefaultBodyOptions()
	opts.BufferBodyTotalBytes = bound
	p := testNewProxy(t, up.URL, testLimits(), opts)

	// The bound holds at every moment, not only when the test looks.
	stop, most := make(chan struct{}), make(chan int64)
	go func() {
		var m int64
		for {
			select {
			case <-stop:
				most <- m
				return
			default:
			}
			m = max(m, p.Handler.bodies.inUse())
			runtime.Gosched()
		}
	}()

	writers := make([]*io.PipeWriter, n)
	results := make([]<-chan testResult, n)
	for i := range n {
		pr, pw := io.Pipe()
		writers[i] = pw
		req := testRequest(t, http.MethodPost, p.Server.URL+fmt.Sprintf("/form/%d", i), nil, pr)
		req.ContentLength = announce
		results[i] = testGo(p.Client, req)
	}
	testWaitFor(t, fmt.Sprintf("%d requests to stream into slots", n-fit), func() bool {
		return p.Ctrl.Snapshot().InFlight == n-fit
	})
	if got := testBuffered(t, p); got != fit*bodyBufferStart {
		t.Errorf("buffered while no body has arrived: got %.0f bytes, want %d, the start buffers of the %d that fit", got, fit*bodyBufferStart, fit)
	}

	body := testBody(announce)
	for _, pw := range writers {
		go func() {
			pw.Write(body)
			pw.Close()
		}()
	}
	for i := range n {
		testStatus(t, testReceive(t, results[i]), http.StatusOK)
	}
	for range n {
		if a := testAwait(t, gate); !bytes.Equal(a.Body, body) {
			t.Errorf("%s: upstream got %d bytes, want the whole body", a.Path, len(a.Body))
		}
	}
	testWaitBuffered(t, p, 0)
	close(stop)
	if m := <-most; m > bound {
		t.Errorf("most bytes held by buffered bodies: got %d, want at most the bound, %d", m, bound)
	}
	testWaitIdle(t, p.Ctrl)
}

// A body that finds the bound reached midway goes upstream as what was
// buffered of it followed by the rest, streamed; a small body arriving
// meanwhile streams whole. Neither is refused, and each is admitted
// before it is all in, as a streamed body is.
func TestBufferedBodyOverBoundStreamsRest(t *testing.T) {
	const bound, first = 4096, 3000 // 3000 bytes grow the buffer to 4096
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, gate)
	opts := testDefaultBodyOptions()
	opts.BufferBodyTotalBytes = bound
	p := testNewProxy(t, up.URL, testLimits(), opts)
	post := func(path string, length int) (*io.PipeWriter, <-chan testResult) {
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.Close() })
		req := testRequest(t, http.MethodPost, p.Server.URL+path, nil, pr)
		req.ContentLength = int64(length)
		return pw, testGo(p.Client, req)
	}

	body := testBody(testDefaultBufferBody)
	bigW, big := post("/big", len(body))
	bigW.Write(body[:first])
	testWaitBuffered(t, p, bound)

	const form = "a=1&b=2"
	smallW, small := post("/small", len(form))
	smallW.Write([]byte(form[:4]))
	testWaitFor(t, "the small body to stream into a slot", func() bool { return p.Ctrl.Snapshot().InFlight == 1 })
	if got := testBuffered(t, p); got != bound {
		t.Errorf("buffered while the small body streams: got %.0f, want the big body's %d", got, bound)
	}
	smallW.Write([]byte(form[4:]))
	smallW.Close()
	testStatus(t, testReceive(t, small), http.StatusOK)
	if a := testAwait(t, gate); a.Path != "/small" || string(a.Body) != form {
		t.Errorf("upstream got %s with %q, want /small with the whole form", a.Path, a.Body)
	}
	testWaitIdle(t, p.Ctrl)

	// Past what the bound let it buffer, the big body streams on.
	bigW.Write(body[first : 2*bound])
	testWaitFor(t, "the big body to stream into a slot", func() bool { return p.Ctrl.Snapshot().InFlight == 1 })
	bigW.Write(body[2*bound:])
	bigW.Close()
	testStatus(t, testReceive(t, big), http.StatusOK)
	if a := testAwait(t, gate); !bytes.Equal(a.Body, body) {
		t.Errorf("upstream got %d bytes of the big body, want all %d in order", len(a.Body), len(body))
	}
	testWaitBuffered(t, p, 0)
	testWaitIdle(t, p.Ctrl)
}

// Whichever way a request with a buffered body ends, the memory it held
// is given back.
func TestBufferedBodyReleased(t *testing.T) {
	const announce = 1000
	head := fmt.Sprintf("POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", announce)
	dial := func(t *testing.T, p *testProxy) net.Conn {
		c, err := net.Dial("tcp", p.Server.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	answer := func(t *testing.T, c net.Conn) int {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	t.Run("forwarded", func(t *testing.T) {
		gate := testNewGate()
		gate.Open()
		p := testNewProxy(t, testUpstream(t, gate).URL, testLimits(), testDefaultBodyOptions())
		res := testFetch(t, p.Client, http.MethodPost, p.Server.URL+"/form", nil, bytes.NewReader(testBody(announce)))
		testStatus(t, res, http.StatusOK)
		testWaitBuffered(t, p, 0)
	})

	t.Run("client gone mid-body", func(t *testing.T) {
		gate := testNewGate()
		gate.Open()
		p := testNewProxy(t, testUpstream(t, gate).URL, testLimits(), testDefaultBodyOptions())
		c := dial(t, p)
		io.WriteString(c, head+string(testBody(300)))
		testWaitBuffered(t, p, bodyBufferStart)
		c.Close()
		testWaitBuffered(t, p, 0)
		if h := gate.Hits(); h != 0 {
			t.Errorf("upstream hits: got %d, want 0", h)
		}
	})

	t.Run("body timeout", func(t *testing.T) {
		gate := testNewGate()
		gate.Open()
		opts := testDefaultBodyOptions()
		opts.BodyReadTimeout = 50 * time.Millisecond
		p := testNewProxy(t, testUpstream(t, gate).URL, testLimits(), opts)
		c := dial(t, p)
		io.WriteString(c, head+string(testBody(600))) // past the start buffer
		if got := answer(t, c); got != http.StatusRequestTimeout {
			t.Errorf("stalled body: got status %d, want 408", got)
		}
		testWaitBuffered(t, p, 0)
	})

	for _, tc := range []struct {
		name  string
		leave bool // the client leaves rather than the queue timing out
		want  int
	}{
		{"shed while queued", false, http.StatusServiceUnavailable},
		{"client gone while queued", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gate := testNewGate()
			defer gate.Open()
			limits := testTightLimits(4)
			limits.Lane[admission.Core].QueueTimeout = 100 * time.Millisecond
			p := testNewProxy(t, testUpstream(t, gate).URL, limits, testDefaultBodyOptions())
			first := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/first", nil, nil))
			testAwait(t, gate)

			ctx, cancel := testCtx(t)
			req := testRequest(t, http.MethodPost, p.Server.URL+"/form", nil, bytes.NewReader(testBody(announce))).WithContext(ctx)
			queued := testGo(p.Client, req)
			testWaitFor(t, "the POST to queue", func() bool { return testLane(p.Ctrl, admission.Core).Queued == 1 })
			// The buffer grew from 512 bytes to the body's length.
			if got := testBuffered(t, p); got != announce {
				t.Errorf("buffered while queued: got %.0f, want the body's %d bytes", got, announce)
			}
			if tc.leave {
				cancel()
				testReceive(t, queued)
			} else {
				testStatus(t, testReceive(t, queued), tc.want)
			}
			testWaitBuffered(t, p, 0)
			gate.Open()
			testStatus(t, testReceive(t, first), http.StatusOK)
			testWaitIdle(t, p.Ctrl)
		})
	}
}
