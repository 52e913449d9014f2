package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// A client that leaves while its small POST is queued is noticed at once:
// its body was read before it queued, so Go's server watches the
// connection. Streamed, the body would still be unread and the request
// would keep its place, be admitted and reach the app after its client had
// gone.
func TestBufferedBodyClientGoneWhileQueued(t *testing.T) {
	for _, buffer := range []int64{1 << 16, 0} {
		t.Run(fmt.Sprintf("buffer %d", buffer), func(t *testing.T) {
			gate := testNewGate()
			defer gate.Open()
			up := testUpstream(t, gate)
			limits := testTightLimits(4)
			// A queue timeout that ends the unbuffered case within the test.
			limits.Lane[admission.Core].QueueTimeout = time.Second
			p := testNewProxy(t, up.URL, limits, Options{BufferBodyBytes: buffer})

			first := testGo(p.Client, testRequest(t, http.MethodGet, p.Server.URL+"/first", nil, nil))
			testAwait(t, gate)

			ctx, cancel := testCtx(t)
			req := testRequest(t, http.MethodPost, p.Server.URL+"/form", nil, strings.NewReader("a=1&b=2")).WithContext(ctx)
			gone := testGo(p.Client, req)
			testWaitFor(t, "the POST to queue", func() bool { return testLane(p.Ctrl, admission.Core).Queued == 1 })
			cancel()
			testReceive(t, gone)
			testWaitFor(t, "the POST to leave the queue", func() bool { return testLane(p.Ctrl, admission.Core).Queued == 0 })
			ln := testLane(p.Ctrl, admission.Core)
			if buffer > 0 {
				if ln.Decisions[admission.Cancelled] != 1 {
					t.Errorf("decisions: got %v, want the POST cancelled", ln.Decisions)
				}
			} else if ln.Decisions[admission.Cancelled] != 0 {
				// Documents why buffering exists: unbuffered, the departure
				// goes unseen and the request times out in the queue.
				t.Errorf("unbuffered decisions: got %v, want no cancellation seen", ln.Decisions)
			}
			gate.Open()
			testStatus(t, testReceive(t, first), http.StatusOK)
			testWaitIdle(t, p.Ctrl)
			if got := gate.Hits(); got != 1 {
				t.Errorf("requests reaching the upstream: got %d, want only the first", got)
			}
		})
	}
}

// A small body sent slowly is read before admission: it holds no slot
// while it trickles, and reaches the upstream whole. Streamed, the same
// request is admitted as soon as its headers arrive.
func TestBufferedBodySlowUploadHoldsNoSlot(t *testing.T) {
	for _, buffer := range []int64{1 << 16, 0} {
		t.Run(fmt.Sprintf("buffer %d", buffer), func(t *testing.T) {
			gate := testNewGate()
			gate.Open()
			up := testUpstream(t, gate)
			p := testNewProxy(t, up.URL, testLimits(), Options{BufferBodyBytes: buffer})
			// Served again, on a listener that says when the server asks
			// for more after the first half of the form.
			const half, rest = "login=alice&", "password=secret"
			wl := &testWatchListener{Listener: testListen(t), after: half, waiting: make(chan struct{})}
			srv := &http.Server{Handler: p.Handler}
			go srv.Serve(wl)
			defer srv.Close()

			pr, pw := io.Pipe()
			req := testRequest(t, http.MethodPost, "http://"+wl.Addr().String()+"/accounts/login/", nil, pr)
			req.ContentLength = int64(len(half + rest))
			res := testGo(p.Client, req)
			io.WriteString(pw, half)
			select {
			case <-wl.waiting:
			case <-time.After(testTimeout):
				t.Fatal("the server never read the first half of the body")
			}
			if buffer > 0 {
				if n := p.Ctrl.Snapshot().InFlight; n != 0 {
					t.Errorf("in flight while the body trickles: got %d, want 0", n)
				}
				if h := gate.Hits(); h != 0 {
					t.Errorf("upstream hits while the body trickles: got %d, want 0", h)
				}
			} else {
				testWaitFor(t, "the streamed request to hold a slot", func() bool { return p.Ctrl.Snapshot().InFlight == 1 })
			}
			io.WriteString(pw, rest)
			pw.Close()
			testStatus(t, testReceive(t, res), http.StatusOK)
			if a := testAwait(t, gate); string(a.Body) != half+rest {
				t.Errorf("upstream body: got %q, want the whole form", a.Body)
			}
			testWaitIdle(t, p.Ctrl)
		})
	}
}

func testListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// testWatchListener closes waiting when a connection, having delivered
// bytes ending with after, is read again: the server wants more.
type testWatchListener struct {
	net.Listener
	after   string
	waiting chan struct{}
	once    sync.Once
}

func (l *testWatchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &testWatchConn{Conn: c, l: l}, nil
}

type testWatchConn struct {
	net.Conn
	l    *testWatchListener
	seen []byte
}

func (c *testWatchConn) Read(p []byte) (int, error) {
	if strings.HasSuffix(string(c.seen), c.l.after) {
		c.l.once.Do(func() { close(c.l.waiting) })
	}
	n, err := c.Conn.Read(p)
	c.seen = append(c.seen, p[:n]...)
	return n, err
}

// A body that ends before its Content-Length is refused before admission,
// the client told 400, and nothing reaches the upstream.
func TestBufferedBodyTruncated(t *testing.T) {
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testLimits(), Options{BufferBodyBytes: 1 << 16})

	c, err := net.Dial("tcp", p.Server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
	c.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("got %d, close %v; want 400 and the connection closed", resp.StatusCode, resp.Close)
	}
	if h := gate.Hits(); h != 0 {
		t.Errorf("upstream hits: got %d, want 0", h)
	}
	m := testParseMetrics(t, testGather(t, p))
	if got := m[`lanegate_requests_total{decision="body_error",lane="core"}`]; got != 1 {
		t.Errorf("body_error decisions: got %v, want 1", got)
	}
	if got := m[`lanegate_requests_total{decision="admitted",lane="core"}`]; got != 0 {
		t.Errorf("admitted: got %v, want 0", got)
	}
}
