package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
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
