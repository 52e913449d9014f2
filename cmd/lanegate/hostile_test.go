package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
)

// Hostile input: what a client that does not play by HTTP's rules can
// make lanegate do. Every probe here is sent over a raw TCP connection, so
// nothing between the test and lanegate tidies it up, and every probe ends
// by a deadline on that connection.

// seenRequest is one request as the recording upstream received it.
type seenRequest struct {
	method, path string
	header       http.Header
	length       int64    // its ContentLength; -1 when chunked
	te           []string // its TransferEncoding

	done    chan struct{} // closed once body and bodyErr are set
	body    string        // what the handler read of the body
	bodyErr error         // why reading stopped short of the end, if it did
}

// recorder is an upstream that records every request it is sent. A request
// is on arrived as soon as its handler runs, before its body is read; its
// done channel is closed once the body has been read to its end or failed.
// It answers "seen METHOD PATH LEN" when it read the whole body.
type recorder struct {
	*httptest.Server
	arrived chan *seenRequest
}

func newRecorder(t *testing.T) *recorder {
	t.Helper()
	u := &recorder{arrived: make(chan *seenRequest, 256)}
	testDone := t.Context()
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := &seenRequest{
			method: r.Method, path: r.URL.Path, header: r.Header.Clone(),
			length: r.ContentLength, te: slices.Clone(r.TransferEncoding),
			done: make(chan struct{}),
		}
		select {
		case u.arrived <- s:
		case <-testDone.Done():
			return
		}
		b, err := io.ReadAll(r.Body)
		s.body, s.bodyErr = string(b), err
		close(s.done)
		if err == nil {
			fmt.Fprintf(w, "seen %s %s %d", r.Method, r.URL.Path, len(b))
		}
	}))
	t.Cleanup(u.Close)
	return u
}

// ended waits until the upstream has read s's body to its end or failed.
func ended(ctx context.Context, t *testing.T, s *seenRequest) *seenRequest {
	t.Helper()
	select {
	case <-s.done:
		return s
	case <-ctx.Done():
		t.Fatalf("the upstream's %s %s: its body never ended: %v", s.method, s.path, ctx.Err())
		return nil
	}
}

// until returns the requests that reach the upstream before one for path,
// which the caller sent last: on a sequential test, everything an earlier
// probe got forwarded.
func (u *recorder) until(ctx context.Context, t *testing.T, path string) []*seenRequest {
	t.Helper()
	var before []*seenRequest
	for {
		s := recv(ctx, t, u.arrived, "the upstream's request for "+path)
		if s.path == path {
			return before
		}
		before = append(before, s)
	}
}

// late returns what reaches the upstream within d: a bounded wait for
// requests that should not come, or that a probe could still get
// forwarded after its connection ended.
func (u *recorder) late(d time.Duration) []*seenRequest {
	timer := time.NewTimer(d)
	defer timer.Stop()
	var got []*seenRequest
	for {
		select {
		case s := <-u.arrived:
			got = append(got, s)
		case <-timer.C:
			return got
		}
	}
}

// quiet fails the test if any request reaches the upstream within d.
func (u *recorder) quiet(t *testing.T, d time.Duration, what string) {
	t.Helper()
	for _, s := range u.late(d) {
		t.Errorf("%s: upstream got %s %s, want nothing", what, s.method, s.path)
	}
}

// afterProbe sends a normal request on a connection of its own, checks the
// proxy serves it, and returns what the upstream got before it.
func afterProbe(ctx context.Context, t *testing.T, c *http.Client, in *instance, u *recorder, path string) []*seenRequest {
	t.Helper()
	r := do(ctx, c, http.MethodGet, in.proxyURL(path), "")
	if want := "seen GET " + path + " 0"; r.err != nil || r.status != http.StatusOK || r.body != want {
		t.Fatalf("normal request after the probe: got %d %q, error %v; want 200 %q", r.status, r.body, r.err, want)
	}
	return u.until(ctx, t, path)
}

// dialProxy opens a raw connection to lanegate's proxy listener, closed
// when the test ends. Reads and writes on it fail once within has passed.
func dialProxy(ctx context.Context, t *testing.T, in *instance, within time.Duration) net.Conn {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", in.addrs.Proxy)
	if err != nil {
		t.Fatalf("dial the proxy: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(within))
	return conn
}

func write(t *testing.T, conn net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(conn, s); err != nil {
		t.Fatalf("writing to the proxy: %v", err)
	}
}

// rawResponse is a response read off a raw connection, body included.
type rawResponse struct {
	status int
	header http.Header
	body   string
	close  bool // the server said it closes the connection after it
}

// closedByPeer reports whether err means the other end closed the
// connection, rather than a timeout or a malformed response.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// readResponse reads the next response to a request of method, or returns
// nil when the connection ends first.
func readResponse(t *testing.T, br *bufio.Reader, method string) *rawResponse {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if closedByPeer(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("reading a response from the proxy: %v (a timeout means it neither answered nor closed)", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !closedByPeer(err) {
		t.Fatalf("reading a response body from the proxy: %v", err)
	}
	return &rawResponse{status: resp.StatusCode, header: resp.Header, body: string(b), close: resp.Close}
}

// sentinel is a well-formed request sent after a probe's first answer on
// a connection left open: every request the proxy reads before it is
// answered first, so once its answer (or the connection's end) is read,
// the proxy has done all it will with the probe's bytes.
const sentinel = "GET /sentinel HTTP/1.1\r\nHost: lanegate.test\r\nConnection: close\r\n\r\n"

// exchange sends probe on a new connection and returns every response the
// proxy sends on it until it closes.
func exchange(ctx context.Context, t *testing.T, in *instance, probe string) []*rawResponse {
	t.Helper()
	conn := dialProxy(ctx, t, in, 5*time.Second)
	defer conn.Close()
	write(t, conn, probe)
	br := bufio.NewReader(conn)
	method, _, _ := strings.Cut(probe, " ")
	first := readResponse(t, br, method)
	if first == nil {
		return nil
	}
	rs := []*rawResponse{first}
	if !first.close {
		// The proxy may close without saying so; then the reads below
		// find the end.
		if _, err := io.WriteString(conn, sentinel); err != nil && !closedByPeer(err) {
			t.Fatalf("writing the sentinel: %v", err)
		}
		for r := readResponse(t, br, http.MethodGet); r != nil; r = readResponse(t, br, http.MethodGet) {
			rs = append(rs, r)
		}
	}
	return rs
}

func statuses(rs []*rawResponse) []int {
	var out []int
	for _, r := range rs {
		out = append(out, r.status)
	}
	return out
}

// hidden is a complete request that a probe tries to slip past lanegate's
// framing, so that the upstream would take it for a request of its own.
const hidden = "GET /smuggled HTTP/1.1\r\nHost: lanegate.test\r\n\r\n"

// chunked is body encoded as one chunk and the last chunk.
func chunked(body string) string {
	return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
}

// probeWant is what must become of a probe.
type probeWant int

const (
	// refused: lanegate answers an error itself, or closes the
	// connection, and forwards nothing.
	refused probeWant = iota
	// forwarded: the probe reaches the upstream as exactly one request,
	// framed one way only, checked by check.
	forwarded
	// broken: the request may reach the upstream, but never with a
	// complete body, and the client gets no 2xx.
	broken
)

type smugglingProbe struct {
	name  string
	raw   string
	want  probeWant
	check func(t *testing.T, s *seenRequest) // for forwarded
}

var smugglingProbes = []smugglingProbe{
	// (a) Content-Length and Transfer-Encoding together. Go's server
	// frames by Transfer-Encoding and drops Content-Length (RFC 9112
	// 6.1), and lanegate forwards the body re-chunked: a request hidden in
	// the chunk data stays body, whichever header comes first.
	{
		name: "content-length then chunked, request in the chunk",
		raw: "POST /fast/cl-te HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 4\r\n" +
			"Transfer-Encoding: chunked\r\n\r\n" + chunked(hidden),
		want:  forwarded,
		check: wantChunkedBody(hidden),
	},
	{
		name: "chunked then content-length, request in the chunk",
		raw: "POST /fast/te-cl HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding: chunked\r\n" +
			"Content-Length: 4\r\n\r\n" + chunked(hidden),
		want:  forwarded,
		check: wantChunkedBody(hidden),
	},
	// A request hidden after the end of a chunked body whose
	// Content-Length covers it: a front proxy that frames by
	// Content-Length sees one request, Go's server two. RFC 9112 6.1: the
	// connection must close after such a request, so the second is never
	// read (golang/go keeps it open; lanegate closes it).
	{
		name: "content-length and chunked, request after the body's end",
		raw: fmt.Sprintf("POST /fast/cl-te-after HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: %d\r\n", len("0\r\n\r\n"+hidden)) +
			"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
		want:  forwarded,
		check: func(*testing.T, *seenRequest) {},
	},
	// HTTP/1.0 with Transfer-Encoding: Go frames by Content-Length and
	// keeps the connection alive; a chunked-framing front proxy would not.
	{
		name: "http/1.0 keep-alive with chunked and content-length",
		raw: "POST /fast/te-10 HTTP/1.0\r\nHost: lanegate.test\r\nConnection: keep-alive\r\n" +
			"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunked(hidden),
		want:  forwarded,
		check: func(*testing.T, *seenRequest) {},
	},
	// (b) Conflicting lengths.
	{
		name: "two different content-lengths",
		raw: "POST /fast/cl-cl HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 0\r\n" +
			fmt.Sprintf("Content-Length: %d\r\n\r\n", len(hidden)) + hidden,
		want: refused,
	},
	{
		name: "content-length list",
		raw: "POST /fast/cl-list HTTP/1.1\r\nHost: lanegate.test\r\n" +
			fmt.Sprintf("Content-Length: 0, %d\r\n\r\n", len(hidden)) + hidden,
		want: refused,
	},
	{
		name: "signed content-length",
		raw: "POST /fast/cl-sign HTTP/1.1\r\nHost: lanegate.test\r\n" +
			fmt.Sprintf("Content-Length: +%d\r\n\r\n", len(hidden)) + hidden,
		want: refused,
	},
	// (c) Bad chunking and transfer codings lanegate does not speak. A bad
	// chunk is only found while the body streams, once the request has
	// gone to the upstream: what matters is that the upstream never gets
	// a complete request out of it.
	{
		name: "bad chunk size",
		raw: "POST /fast/bad-chunk HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"zz\r\n" + hidden + "\r\n0\r\n\r\n",
		want: broken,
	},
	{
		name: "chunk size overflow",
		raw: "POST /fast/huge-chunk HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"10000000000000002f\r\n" + hidden + "\r\n0\r\n\r\n",
		want: broken,
	},
	{
		name: "xchunked",
		raw:  "POST /fast/xchunked HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding: xchunked\r\n\r\n" + chunked(hidden),
		want: refused,
	},
	{
		name: "chunked, identity",
		raw:  "POST /fast/te-list HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n" + chunked(hidden),
		want: refused,
	},
	{
		name: "two transfer-encoding headers",
		raw: "POST /fast/te-te HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding: chunked\r\n" +
			"Transfer-Encoding: identity\r\n\r\n" + chunked(hidden),
		want: refused,
	},
	// (d) obs-fold. Go's server unfolds a continuation line into the
	// previous value with a space, as RFC 9112 5.2 allows a server to: a
	// Transfer-Encoding on a continuation line is text, not framing.
	{
		name: "obs-fold",
		raw:  "GET /fast/fold HTTP/1.1\r\nHost: lanegate.test\r\nX-A: a\r\n\tb\r\n\r\n",
		want: forwarded,
		check: func(t *testing.T, s *seenRequest) {
			if got := s.header["X-A"]; len(got) != 1 || strings.ContainsAny(got[0], "\r\n") {
				t.Errorf("upstream got X-A %q, want one line", got)
			}
		},
	},
	{
		name: "obs-fold hiding transfer-encoding",
		raw: "POST /fast/fold-te HTTP/1.1\r\nHost: lanegate.test\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n" +
			"Content-Length: 0\r\n\r\n" + chunked(hidden),
		want: forwarded,
		check: func(t *testing.T, s *seenRequest) {
			if len(s.te) != 0 || s.length != 0 || s.body != "" {
				t.Errorf("upstream got transfer-encoding %q, length %d, body %q; want the empty body Content-Length says", s.te, s.length, s.body)
			}
			if got := s.header["X-A"]; len(got) != 1 || strings.ContainsAny(got[0], "\r\n") {
				t.Errorf("upstream got X-A %q, want one line", got)
			}
		},
	},
	{
		name: "obs-fold on the first header line",
		raw:  "GET /fast/fold-first HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: lanegate.test\r\n\r\n",
		want: refused,
	},
	// (e) Bare LF and bare CR. Go's server takes a bare LF for a line end
	// (RFC 9112 2.2 allows it) and lanegate forwards the request with
	// CRLFs; a bare CR inside a line is refused.
	{
		name: "bare LF line endings",
		raw:  "GET /fast/lf HTTP/1.1\nHost: lanegate.test\nX-A: a\n\n",
		want: forwarded,
		check: func(t *testing.T, s *seenRequest) {
			if got := s.header["X-A"]; len(got) != 1 || got[0] != "a" {
				t.Errorf("upstream got X-A %q, want [a]", got)
			}
		},
	},
	{
		name: "bare CR in a header",
		raw:  "GET /fast/cr HTTP/1.1\r\nHost: lanegate.test\r\nX-A: a\rb\r\n\r\n",
		want: refused,
	},
	{
		name: "bare CR hiding transfer-encoding",
		raw: "POST /fast/cr-te HTTP/1.1\r\nHost: lanegate.test\r\nX-A: a\rTransfer-Encoding: chunked\r\n" +
			"Content-Length: 0\r\n\r\n" + chunked(hidden),
		want: refused,
	},
	// (f) Malformed request lines.
	{
		name: "space in the path",
		raw:  "GET /fast/a b HTTP/1.1\r\nHost: lanegate.test\r\n\r\n",
		want: refused,
	},
	{
		name: "two spaces in the request line",
		raw:  "GET  /fast/a HTTP/1.1\r\nHost: lanegate.test\r\n\r\n",
		want: refused,
	},
	// (g) Whitespace between a header's name and its colon (RFC 9112 5.1:
	// must be refused with 400).
	{
		name: "space before the colon of transfer-encoding",
		raw: "POST /fast/te-space HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding : chunked\r\n" +
			"Content-Length: 0\r\n\r\n" + chunked(hidden),
		want: refused,
	},
	{
		name: "space before the colon of content-length",
		raw: "POST /fast/cl-space HTTP/1.1\r\nHost: lanegate.test\r\n" +
			fmt.Sprintf("Content-Length : %d\r\n\r\n", len(hidden)) + hidden,
		want: refused,
	},
}

// wantChunkedBody checks a request was forwarded chunked, with no
// Content-Length, and carrying body as its body.
func wantChunkedBody(body string) func(t *testing.T, s *seenRequest) {
	return func(t *testing.T, s *seenRequest) {
		t.Helper()
		if !slices.Equal(s.te, []string{"chunked"}) || s.length != -1 || s.header.Get("Content-Length") != "" {
			t.Errorf("upstream got transfer-encoding %q, length %d, Content-Length %q; want chunked alone",
				s.te, s.length, s.header.Get("Content-Length"))
		}
		if s.bodyErr != nil || s.body != body {
			t.Errorf("upstream got body %q, error %v; want %q", s.body, s.bodyErr, body)
		}
	}
}

// TestSmugglingProbes sends requests framed so that two parsers could
// disagree about where they end, each hiding a second request. Whatever
// lanegate makes of them, the hidden request must never reach the upstream
// as a request of its own, every 2xx must be the upstream's answer to a
// request it got whole, and the proxy must go on serving.
func TestSmugglingProbes(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	in := start(ctx, t, environ(up.URL))
	c := newClient(t)

	for i, p := range smugglingProbes {
		t.Run(p.name, func(t *testing.T) {
			rs := exchange(ctx, t, in, p.raw)
			seen := afterProbe(ctx, t, c, in, up, fmt.Sprintf("/after/%d", i))
			// A request forwarded and then cut short can reach the
			// upstream's handler after the normal request does.
			seen = append(seen, up.late(100*time.Millisecond)...)
			for _, s := range seen {
				ended(ctx, t, s)
			}
			t.Logf("answers %v; upstream got %d requests", statuses(rs), len(seen))

			complete := 0
			for _, s := range seen {
				if s.path == "/smuggled" {
					t.Errorf("the hidden request reached the upstream as a request of its own")
				}
				if s.bodyErr == nil {
					complete++
				}
			}
			ok := 0
			for _, r := range rs {
				if r.status/100 == 2 {
					ok++
				}
			}
			if ok != complete {
				t.Errorf("answers %v: %d are 2xx, but the upstream got %d requests whole", statuses(rs), ok, complete)
			}

			switch p.want {
			case refused:
				if len(rs) > 1 || len(rs) == 1 && rs[0].status < 400 {
					t.Errorf("answers %v: want one 4xx or 5xx and the connection closed, or no answer", statuses(rs))
				}
				if len(seen) > 0 {
					t.Errorf("upstream got %s %s, want nothing", seen[0].method, seen[0].path)
				}
			case forwarded:
				if len(rs) == 0 || rs[0].status != http.StatusOK {
					t.Fatalf("answers %v: want the upstream's 200 first", statuses(rs))
				}
				if len(seen) == 0 {
					t.Fatal("upstream got nothing, want the probe")
				}
				if want := strings.Fields(p.raw)[1]; seen[0].path != want {
					t.Errorf("upstream got %s first, want %s", seen[0].path, want)
				}
				for _, s := range seen[1:] {
					if s.path != "/sentinel" {
						t.Errorf("upstream got %s %s after the probe, want only the sentinel", s.method, s.path)
					}
				}
				p.check(t, seen[0])
			case broken:
				if ok > 0 {
					t.Errorf("answers %v: want no 2xx", statuses(rs))
				}
				for _, s := range seen {
					if s.bodyErr == nil {
						t.Errorf("upstream read %s %s whole (body %q), want its body cut short", s.method, s.path, s.body)
					}
				}
			}
		})
	}
	up.quiet(t, 250*time.Millisecond, "after the last probe")
	if st := status(ctx, t, c, in); st.InFlight != 0 {
		t.Errorf("/status after the probes: %d in flight, want 0", st.InFlight)
	}
}

// laneSlotsFree fails the test unless no lane has a request in flight or
// queued.
func laneSlotsFree(t *testing.T, st admin.Status, when string) {
	t.Helper()
	if st.InFlight != 0 {
		t.Errorf("/status %s: %d in flight, want 0", when, st.InFlight)
	}
	for name, l := range st.Lanes {
		if l.InFlight != 0 || l.Queued != 0 {
			t.Errorf("/status %s: lane %s has %d in flight, %d queued; want 0, 0", when, name, l.InFlight, l.Queued)
		}
	}
}

// TestSlowlorisHeaders opens connections that never finish their headers.
// Go's server reads headers before lanegate sees the request, so they take
// no slot and queue nowhere, and LANEGATE_READ_HEADER_TIMEOUT closes each
// however it trickles.
func TestSlowlorisHeaders(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	const headerTimeout = time.Second
	const bound = 5 * time.Second
	// One slot: were a stalled connection holding it, the normal request
	// would queue behind it.
	in := start(ctx, t, append(environ(up.URL, budgetOne...), "LANEGATE_READ_HEADER_TIMEOUT="+headerTimeout.String()))
	c := newClient(t)

	partials := []string{
		"", // connects and says nothing
		"GET /fast/slow",
		"GET /fast/slow HTTP/1.1\r\n",
		"GET /fast/slow HTTP/1.1\r\nHost: lanegate.test\r\nX-Slow: ",
		"POST /fast/slow HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 5\r\n", // all but the blank line
	}
	const n = 20
	begin := time.Now()
	conns := make([]net.Conn, 0, n+1)
	for i := range n {
		conn := dialProxy(ctx, t, in, bound)
		write(t, conn, partials[i%len(partials)])
		conns = append(conns, conn)
	}
	// One more sends a byte of its header every 50 ms: the timeout bounds
	// the whole header, not the gap between reads.
	trickler := dialProxy(ctx, t, in, bound)
	write(t, trickler, "GET /fast/trickle HTTP/1.1\r\nHost: lanegate.test\r\nX-Trickle: ")
	conns = append(conns, trickler)
	trickled := make(chan error, 1)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
			case <-ctx.Done():
				trickled <- ctx.Err()
				return
			}
			if _, err := trickler.Write([]byte("a")); err != nil {
				trickled <- err
				return
			}
		}
	}()

	// While they stall: nothing admitted or queued, and a normal request
	// is served at once.
	laneSlotsFree(t, status(ctx, t, c, in), "while the headers stall")
	r := do(ctx, c, http.MethodGet, in.proxyURL("/fast/normal"), "")
	served := time.Since(begin)
	if r.err != nil || r.status != http.StatusOK || r.body != "seen GET /fast/normal 0" {
		t.Fatalf("normal request while the headers stall: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	// No stalled connection can be closed before headerTimeout after
	// begin, so this shows the request did not wait for them.
	if served >= headerTimeout {
		t.Errorf("normal request served %v after the stalls began, want it before the header timeout (%v) frees anything", served, headerTimeout)
	}
	laneSlotsFree(t, status(ctx, t, c, in), "while the headers stall, after a normal request")

	for i, conn := range conns {
		b, err := io.ReadAll(conn)
		took := time.Since(begin)
		if err != nil && !closedByPeer(err) {
			t.Errorf("stalled connection %d: %v after %v, want it closed by lanegate within %v", i, err, took, bound)
			continue
		}
		if took < headerTimeout {
			t.Errorf("stalled connection %d closed after %v, before the header timeout %v", i, took, headerTimeout)
		}
		if len(b) > 0 {
			if st, _, _ := strings.Cut(string(b), "\r\n"); !strings.HasPrefix(st, "HTTP/1.1 4") && !strings.HasPrefix(st, "HTTP/1.1 5") {
				t.Errorf("stalled connection %d was answered %q, want no answer or an error", i, st)
			}
		}
	}
	if err := recv(ctx, t, trickled, "the trickling writer's end"); !closedByPeer(err) {
		t.Errorf("trickling writer stopped with %v, want the connection closed by lanegate", err)
	}

	if s := up.until(ctx, t, "/fast/normal"); len(s) > 0 {
		t.Errorf("upstream got %s %s from a stalled connection", s[0].method, s[0].path)
	}
	up.quiet(t, 100*time.Millisecond, "after the stalled connections closed")
	laneSlotsFree(t, status(ctx, t, c, in), "after the stalled connections closed")
}

// TestSlowBody sends a request's headers and then stalls its body. A body
// larger than LANEGATE_BUFFER_BODY_BYTES streams: the request is admitted
// and forwarded once its headers are in, and its slot is held while the
// upstream reads the body, for as long as the client takes. With no body
// read timeout, only the client's leaving ends it, which must release the
// slot at once and end the upstream's request.
func TestSlowBody(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	const headerTimeout = time.Second
	in := start(ctx, t, append(environ(up.URL, budgetOne...),
		"LANEGATE_READ_HEADER_TIMEOUT="+headerTimeout.String(),
		"LANEGATE_BUFFER_BODY_BYTES=100", // the 1000-byte body streams
		"LANEGATE_BODY_READ_TIMEOUT=0"))
	c := newClient(t)

	conn := dialProxy(ctx, t, in, testTimeout)
	write(t, conn, "POST /fast/upload HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 1000\r\n\r\n0123456789")
	s := recv(ctx, t, up.arrived, "the upload at the upstream")
	if s.path != "/fast/upload" || s.length != 1000 {
		t.Fatalf("upstream got %s with length %d, want /fast/upload with 1000", s.path, s.length)
	}
	if st := status(ctx, t, c, in); st.InFlight != 1 || st.Lanes["core"].InFlight != 1 {
		t.Fatalf("/status while the upstream reads the body: %d in flight (core %d), want the upload's 1",
			st.InFlight, st.Lanes["core"].InFlight)
	}

	// Stall past LANEGATE_READ_HEADER_TIMEOUT: it covers headers only, and
	// nothing else bounds the body; lanegate neither answers nor closes.
	conn.SetReadDeadline(time.Now().Add(headerTimeout + headerTimeout/2))
	if n, err := conn.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled upload: read %d bytes, error %v; want nothing (the body is still being waited for)", n, err)
	}
	conn.SetReadDeadline(time.Time{})
	if st := status(ctx, t, c, in); st.InFlight != 1 {
		t.Fatalf("/status with the body stalled past the header timeout: %d in flight, want the upload still holding its slot", st.InFlight)
	}
	select {
	case <-s.done:
		t.Fatalf("upstream's read of the body ended (%q, %v) while the client still stalls", s.body, s.bodyErr)
	default:
	}

	// The only slot is taken: a normal request queues behind the upload.
	queued := goGet(ctx, c, in.proxyURL("/fast/queued"))
	pollStatus(ctx, t, c, in, "the normal request queued", func(st admin.Status) bool { return st.Lanes["core"].Queued == 1 })

	// The client leaves mid-body: the slot goes at once to the queued
	// request, and the upstream's request ends with its body cut short.
	left := time.Now()
	conn.Close()
	r := recv(ctx, t, queued, "the queued request")
	if r.err != nil || r.status != http.StatusOK || r.body != "seen GET /fast/queued 0" {
		t.Fatalf("queued request after the upload's client left: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	if took := time.Since(left); took > 2*time.Second {
		t.Errorf("queued request admitted %v after the upload's client left, want at once", took)
	}
	ended(ctx, t, s)
	if s.bodyErr == nil || len(s.body) >= 1000 {
		t.Errorf("upstream read the upload's body whole (%d bytes, error %v), want it cut short", len(s.body), s.bodyErr)
	}
	bounded, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	pollStatus(bounded, t, c, in, "no request in flight", func(st admin.Status) bool { return st.InFlight == 0 })
	if q := up.until(ctx, t, "/fast/queued"); len(q) > 0 {
		t.Errorf("upstream got %s %s, want only the upload and the queued request", q[0].method, q[0].path)
	}
}

// TestOversizeInput sends headers and bodies over lanegate's limits.
func TestOversizeInput(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	const maxHeader, maxBody = 8192, 1024
	in := start(ctx, t, append(environ(up.URL, budgetOne...),
		fmt.Sprintf("LANEGATE_MAX_HEADER_BYTES=%d", maxHeader),
		fmt.Sprintf("LANEGATE_MAX_BODY_BYTES=%d", maxBody)))
	c := newClient(t)
	// Past the limit, yet under the 32768 default, so they fail only if
	// LANEGATE_MAX_HEADER_BYTES is in force.
	big := strings.Repeat("x", 4*maxHeader)
	// head returns a GET whose request head is exactly n bytes.
	head := func(n int) string {
		const pre, post = "GET /fast/exact HTTP/1.1\r\nHost: lanegate.test\r\nX-Pad: ", "\r\n\r\n"
		return pre + big[:n-len(pre)-len(post)] + post
	}

	for i, tt := range []struct {
		name, raw string
		want      int
	}{
		{
			name: "headers under the limit",
			raw:  "GET /fast/small HTTP/1.1\r\nHost: lanegate.test\r\nX-Pad: " + big[:maxHeader/2] + "\r\n\r\n",
			want: http.StatusOK,
		},
		{
			name: "head of exactly LANEGATE_MAX_HEADER_BYTES",
			raw:  head(maxHeader),
			want: http.StatusOK,
		},
		{
			name: "head one byte over LANEGATE_MAX_HEADER_BYTES",
			raw:  head(maxHeader + 1),
			want: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name: "headers over LANEGATE_MAX_HEADER_BYTES",
			raw:  "GET /fast/big HTTP/1.1\r\nHost: lanegate.test\r\nX-Pad: " + big + "\r\n\r\n",
			want: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name: "huge cookie",
			raw:  "GET /fast/cookie HTTP/1.1\r\nHost: lanegate.test\r\nCookie: sessionid=" + big + "\r\n\r\n",
			want: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name: "many cookie headers",
			raw: "GET /fast/cookies HTTP/1.1\r\nHost: lanegate.test\r\n" +
				strings.Repeat("Cookie: c="+big[:maxHeader/8]+"\r\n", 32) + "\r\n",
			want: http.StatusRequestHeaderFieldsTooLarge,
		},
		{
			name: "body at LANEGATE_MAX_BODY_BYTES",
			raw: fmt.Sprintf("POST /fast/body HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: %d\r\n\r\n", maxBody) +
				big[:maxBody],
			want: http.StatusOK,
		},
		{
			name: "content-length over LANEGATE_MAX_BODY_BYTES",
			raw: fmt.Sprintf("POST /fast/body HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: %d\r\n\r\n", maxBody+1) +
				big[:maxBody+1],
			want: http.StatusRequestEntityTooLarge,
		},
		{
			// Announced, not sent: refused before a byte of body is read.
			name: "content-length far over LANEGATE_MAX_BODY_BYTES",
			raw:  "POST /fast/body HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 1099511627776\r\n\r\n",
			want: http.StatusRequestEntityTooLarge,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := status(ctx, t, c, in).Lanes["core"].Admitted
			conn := dialProxy(ctx, t, in, 5*time.Second)
			write(t, conn, tt.raw)
			method, _, _ := strings.Cut(tt.raw, " ")
			r := readResponse(t, bufio.NewReader(conn), method)
			conn.Close()
			if r == nil || r.status != tt.want {
				t.Fatalf("got %+v, want %d", r, tt.want)
			}
			seen := afterProbe(ctx, t, c, in, up, fmt.Sprintf("/after/%d", i))
			seen = append(seen, up.late(50*time.Millisecond)...)
			admitted := status(ctx, t, c, in).Lanes["core"].Admitted - before
			if tt.want == http.StatusOK {
				if len(seen) != 1 || ended(ctx, t, seen[0]).bodyErr != nil {
					t.Errorf("upstream got %d requests, want the probe whole", len(seen))
				}
				return
			}
			if len(seen) > 0 {
				t.Errorf("upstream got %s %s, want nothing", seen[0].method, seen[0].path)
			}
			// The refused request took no slot: only the normal one after
			// it was admitted.
			if admitted != 1 {
				t.Errorf("core lane admitted %d requests, want only the normal one after the probe", admitted)
			}
		})
	}

	t.Run("chunked body over LANEGATE_MAX_BODY_BYTES", func(t *testing.T) {
		// No length up front: the limit cuts the body while it streams,
		// after the request has been admitted and forwarded.
		conn := dialProxy(ctx, t, in, 5*time.Second)
		chunk := fmt.Sprintf("%x\r\n%s\r\n", maxBody/2, big[:maxBody/2])
		write(t, conn, "POST /fast/chunked HTTP/1.1\r\nHost: lanegate.test\r\nTransfer-Encoding: chunked\r\n\r\n"+
			strings.Repeat(chunk, 4)+"0\r\n\r\n")
		r := readResponse(t, bufio.NewReader(conn), http.MethodPost)
		conn.Close()
		if r != nil && r.status != http.StatusRequestEntityTooLarge {
			t.Errorf("got %d %q, want 413 or the connection closed", r.status, r.body)
		}
		seen := afterProbe(ctx, t, c, in, up, "/after/chunked")
		seen = append(seen, up.late(100*time.Millisecond)...)
		for _, s := range seen {
			ended(ctx, t, s)
			if s.bodyErr == nil || len(s.body) > maxBody {
				t.Errorf("upstream read %d bytes of %s, error %v; want at most %d and the body cut short", len(s.body), s.path, s.bodyErr, maxBody)
			}
		}
		bounded, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		pollStatus(bounded, t, c, in, "no request in flight", func(st admin.Status) bool { return st.InFlight == 0 })
	})
}

// TestForgedForwarding sends every header that names a client, from a peer
// that is not a trusted proxy: the upstream must see the peer's address
// only, whatever the client claimed.
func TestForgedForwarding(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	// Proxies are trusted, just not this peer.
	in := start(ctx, t, environ(up.URL, "LANEGATE_TRUSTED_PROXIES=10.0.0.0/8,192.0.2.7"))

	forged := "X-Forwarded-For: 10.1.1.1, 192.0.2.7\r\n" +
		"X-Forwarded-For: 6.6.6.6\r\n" +
		"x-forwarded-for: 7.7.7.7\r\n" +
		"X-Real-IP: 6.6.6.6\r\n" +
		"True-Client-IP: 6.6.6.6\r\n" +
		"X-Client-IP: 6.6.6.6\r\n" +
		"CF-Connecting-IP: 6.6.6.6\r\n" +
		"Fastly-Client-IP: 6.6.6.6\r\n" +
		"X-Cluster-Client-IP: 6.6.6.6\r\n" +
		"Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n" +
		"Forwarded: for=\"[2001:db8::6]\"\r\n" +
		"X-Forwarded-Host: evil.example\r\n" +
		"X-Forwarded-Proto: https\r\n" +
		"X-Lanegate-Identity: forged\r\n" +
		// WSGI servers fold "_" into the same variable as "-".
		"X_Forwarded_For: 6.6.6.6\r\n" +
		"X_Real_IP: 6.6.6.6\r\n" +
		"X-Forwarded_Host: evil.example\r\n"
	for _, tt := range []struct{ name, connection string }{
		{"plain", ""},
		// Naming lanegate's own headers as hop-by-hop must not remove them:
		// they are set after the client's hop-by-hop headers are dropped.
		{"named hop-by-hop", "Connection: keep-alive, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs := exchange(ctx, t, in, "GET /fast/forged HTTP/1.1\r\nHost: lanegate.test\r\n"+tt.connection+forged+"\r\n")
			if len(rs) == 0 || rs[0].status != http.StatusOK {
				t.Fatalf("answers %v, want 200", statuses(rs))
			}
			s := recv(ctx, t, up.arrived, "the forged request at the upstream")
			h := s.header
			for name, want := range map[string][]string{
				"X-Forwarded-For":   {"127.0.0.1"},
				"X-Real-Ip":         {"127.0.0.1"},
				"X-Forwarded-Host":  {"lanegate.test"},
				"X-Forwarded-Proto": {"http"},
			} {
				if got := h.Values(name); !slices.Equal(got, want) {
					t.Errorf("upstream got %s %q, want %q", name, got, want)
				}
			}
			for _, name := range []string{"True-Client-Ip", "X-Client-Ip", "Cf-Connecting-Ip", "Fastly-Client-Ip",
				"X-Cluster-Client-Ip", "Forwarded", "X-Lanegate-Identity"} {
				if got := h.Values(name); len(got) > 0 {
					t.Errorf("upstream got %s %q, want it dropped", name, got)
				}
			}
			for name, vs := range h {
				for _, v := range vs {
					if strings.Contains(v, "6.6.6.6") || strings.Contains(v, "7.7.7.7") || strings.Contains(v, "evil.example") {
						t.Errorf("upstream got the client's claim in %s: %q", name, v)
					}
				}
			}
			// The sentinel on the same connection.
			recv(ctx, t, up.arrived, "the sentinel at the upstream")
		})
	}
}

// With LANEGATE_BODY_READ_TIMEOUT, a client that stalls mid-body is
// answered 408 and frees its slot, instead of holding it until it leaves.
func TestSlowBodyTimeout(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	in := start(ctx, t, append(environ(up.URL, budgetOne...),
		"LANEGATE_BODY_READ_TIMEOUT=1s",
		"LANEGATE_BUFFER_BODY_BYTES=100")) // the 1000-byte body streams
	c := newClient(t)

	conn := dialProxy(ctx, t, in, testTimeout)
	write(t, conn, "POST /fast/upload HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 1000\r\n\r\n0123456789")
	s := recv(ctx, t, up.arrived, "the upload at the upstream")
	began := time.Now()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := readResponse(t, bufio.NewReader(conn), http.MethodPost)
	conn.Close()
	// lanegate cuts the upload off at the timeout; this upstream answers
	// 200 to a cut-off body as soon as its read fails, and lanegate relays
	// an answer that came first. Either way the client hears within about
	// the timeout, not whenever it gives up.
	if r == nil || (r.status != http.StatusRequestTimeout && r.status != http.StatusOK) {
		t.Fatalf("stalled upload: answer %+v, want 408 or the upstream's own answer", r)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("408 came %s after the stall began, want about the 1 s timeout", d)
	}
	select {
	case <-s.done:
		if s.bodyErr == nil {
			t.Error("the upstream read the whole body, want it cut off")
		}
	case <-ctx.Done():
		t.Fatal("the upstream's read of the body never ended")
	}
	pollStatus(ctx, t, c, in, "the slot released", func(st admin.Status) bool { return st.InFlight == 0 })
	m := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
	if r.status == http.StatusRequestTimeout && !strings.Contains(m.body, "lanegate_client_body_errors_total 1") {
		t.Errorf("metrics: want lanegate_client_body_errors_total 1")
	}
	if strings.Contains(m.body, `lanegate_upstream_errors_total{kind=`) {
		t.Errorf("a client's stalled body counted as an upstream error")
	}
	if r := do(ctx, c, http.MethodGet, in.proxyURL("/fast/after"), ""); r.status != http.StatusOK {
		t.Errorf("next request: %d, want 200", r.status)
	}
}

// TestSlowSmallBody stalls a body small enough to be read before
// admission: it takes no slot while it stalls, never reaches the upstream
// unfinished, and is answered 408 at LANEGATE_BODY_READ_TIMEOUT.
func TestSlowSmallBody(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	in := start(ctx, t, append(environ(up.URL, budgetOne...), "LANEGATE_BODY_READ_TIMEOUT=1s"))
	c := newClient(t)

	conn := dialProxy(ctx, t, in, testTimeout)
	write(t, conn, "POST /accounts/login/ HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 1000\r\n\r\nlogin=alice&")
	// The only slot stays free: a normal request is served meanwhile.
	if r := do(ctx, c, http.MethodGet, in.proxyURL("/fast/meanwhile"), ""); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request while a small body stalls: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := readResponse(t, bufio.NewReader(conn), http.MethodPost)
	conn.Close()
	if r == nil || r.status != http.StatusRequestTimeout {
		t.Fatalf("stalled small body: answer %+v, want 408", r)
	}
	st := status(ctx, t, c, in)
	if st.InFlight != 0 || st.Lanes["login"].Admitted != 0 {
		t.Errorf("/status after the stalled body: %d in flight, %d logins admitted; want none", st.InFlight, st.Lanes["login"].Admitted)
	}
	if q := up.until(ctx, t, "/fast/meanwhile"); len(q) > 0 {
		t.Errorf("upstream got %s %s, want only the request served meanwhile", q[0].method, q[0].path)
	}
	m := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
	if !strings.Contains(m.body, `lanegate_requests_total{decision="body_error",lane="login"} 1`) {
		t.Errorf("metrics: want one login body_error decision")
	}
}

// TestMaxConns holds LANEGATE_MAX_CONNS connections open without a
// request: the next connection is not accepted (it waits in the kernel's
// backlog) until one of them closes, and the admin listener still
// answers meanwhile.
func TestMaxConns(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	in := start(ctx, t, environ(up.URL, "LANEGATE_MAX_CONNS=2", "LANEGATE_READ_HEADER_TIMEOUT=20s"))
	c := newClient(t)
	metric := func(name string) string {
		t.Helper()
		r := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
		for _, line := range strings.Split(r.body, "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		t.Fatalf("/metrics has no %s", name)
		return ""
	}
	idle1 := dialProxy(ctx, t, in, testTimeout)
	dialProxy(ctx, t, in, testTimeout)
	// A third client: its connection completes in the kernel, but lanegate
	// does not accept it while two are open.
	third := make(chan result, 1)
	go func() {
		once := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		third <- do(ctx, once, http.MethodGet, in.proxyURL("/fast/third"), "")
	}()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for metric("lanegate_client_connections_limited_total") != "1" || metric("lanegate_client_connections") != "2" {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("the listener never reached its limit: %v", ctx.Err())
		}
	}
	notYet(t, third, "the third client while two connections are open")
	if st := status(ctx, t, c, in); st.InFlight != 0 {
		t.Errorf("/status at the connection limit: %d in flight, want 0 (idle connections take no slot)", st.InFlight)
	}
	idle1.Close()
	if r := recv(ctx, t, third, "the third client"); r.err != nil || r.status != http.StatusOK || r.body != "fast /fast/third" {
		t.Errorf("third client once a connection closed: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
}
