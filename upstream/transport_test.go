package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer is an upstream written against TCP, so a test controls exactly
// what goes on the wire: each accepted connection is handed to serve.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int64
	wg    sync.WaitGroup
}

func newRawServer(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

// serveOK answers every request on the connection with a small 200, keeping
// the connection alive, until the client closes it.
func serveOK(c net.Conn, br *bufio.Reader) {
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

func newTestTransport(addr string) *h1Transport {
	return &h1Transport{
		dial:        (&net.Dialer{Timeout: time.Second}).DialContext,
		addr:        addr,
		idleTimeout: time.Minute,
		maxIdle:     4,
		fallback:    http.DefaultTransport,
	}
}

func doGet(t *testing.T, tr http.RoundTripper, ctx context.Context, addr string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(b), nil
}

func TestTransportReusesConnections(t *testing.T) {
	s := newRawServer(t, serveOK)
	tr := newTestTransport(s.ln.Addr().String())
	defer tr.CloseIdleConnections()
	for i := range 5 {
		resp, body, err := doGet(t, tr, context.Background(), s.ln.Addr().String())
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: got %d %q, want 200 \"ok\"", i, resp.StatusCode, body)
		}
	}
	if got := s.conns.Load(); got != 1 {
		t.Fatalf("connections opened: got %d, want 1", got)
	}
}

func TestTransportHonoursConnectionClose(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
	})
	tr := newTestTransport(s.ln.Addr().String())
	defer tr.CloseIdleConnections()
	for i := range 3 {
		if _, _, err := doGet(t, tr, context.Background(), s.ln.Addr().String()); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if got := s.conns.Load(); got != 3 {
		t.Fatalf("connections opened: got %d, want 3 (one per request)", got)
	}
}

// An upstream that closes a keep-alive connection without saying so (as
// gunicorn does when its keep-alive expires) must not fail the next GET:
// nothing was processed, so it is sent again on a new connection. A POST
// is not replayed: the app may have acted on it.
func TestTransportRetriesStaleIdleConnection(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// Close silently after one response.
	})
	addr := s.ln.Addr().String()
	tr := newTestTransport(addr)
	defer tr.CloseIdleConnections()
	if _, _, err := doGet(t, tr, context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	if _, body, err := doGet(t, tr, context.Background(), addr); err != nil || body != "ok" {
		t.Fatalf("GET on a stale connection: got %q, %v; want a transparent retry", body, err)
	}
	for _, body := range []io.Reader{strings.NewReader("a=1"), nil} {
		// Prime a pooled connection the server will have closed.
		if _, _, err := doGet(t, tr, context.Background(), addr); err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", body)
		before := s.conns.Load()
		_, err := tr.RoundTrip(req)
		if !errors.Is(err, errServerClosedIdle) {
			t.Fatalf("POST (body %v) on a stale connection: got %v, want errServerClosedIdle", body != nil, err)
		}
		if got := s.conns.Load() - before; got != 0 {
			t.Fatalf("POST (body %v) was sent again on %d new connection(s), want never", body != nil, got)
		}
	}
}

// The response-header timeout starts when the request is sent: a client
// uploading slowly is not cut off by it.
func TestTransportSlowUploadNotTimedOut(t *testing.T) {
	s := newRawServer(t, serveOK)
	addr := s.ln.Addr().String()
	tr := newTestTransport(addr)
	tr.responseHeaderTimeout = 100 * time.Millisecond
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	go func() {
		for range 4 {
			pw.Write([]byte("chunk"))
			<-time.After(60 * time.Millisecond) // the client's pace, not synchronisation
		}
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", pr)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("slow upload: got %v, want the response", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("got %d, want 200", resp.StatusCode)
	}
}

// An upstream that answers before reading the whole body (say 413) and
// closes: the client gets that answer, not a 502.
func TestTransportRelaysEarlyResponse(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
		c.(*net.TCPConn).CloseRead()
	})
	addr := s.ln.Addr().String()
	tr := newTestTransport(addr)
	defer tr.CloseIdleConnections()
	body := strings.NewReader(strings.Repeat("x", 8<<20))
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", body)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("got %v, want the upstream's 413", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || string(b) != "big" {
		t.Fatalf("got %d %q, want 413 \"big\"", resp.StatusCode, b)
	}
}

func TestTransportSkipsInterimResponses(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
	})
	tr := newTestTransport(s.ln.Addr().String())
	defer tr.CloseIdleConnections()
	resp, body, err := doGet(t, tr, context.Background(), s.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || body != "final" {
		t.Fatalf("got %d %q, want 200 \"final\"", resp.StatusCode, body)
	}
}

func TestTransportResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		<-release
	})
	defer close(release)
	tr := newTestTransport(s.ln.Addr().String())
	tr.responseHeaderTimeout = 50 * time.Millisecond
	_, _, err := doGet(t, tr, context.Background(), s.ln.Addr().String())
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("got %v, want a timeout", err)
	}
	if got := len(tr.idle); got != 0 {
		t.Fatalf("pooled after a timeout: got %d, want 0", got)
	}
}

func TestTransportClientCancelUnblocks(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		close(arrived)
		<-release
	})
	defer close(release)
	tr := newTestTransport(s.ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := doGet(t, tr, ctx, s.ln.Addr().String())
		errc <- err
	}()
	<-arrived
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("got a response, want an error after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip still blocked after the client cancelled")
	}
	if got := len(tr.idle); got != 0 {
		t.Fatalf("pooled after cancel: got %d, want 0", got)
	}
}

// A body closed before its end must close the connection: reusing it
// would read the rest of the old body as the next response.
func TestTransportUnfinishedBodyClosesConnection(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
		}
	})
	addr := s.ln.Addr().String()
	tr := newTestTransport(addr)
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	io.ReadFull(resp.Body, buf)
	resp.Body.Close()
	if got := len(tr.idle); got != 0 {
		t.Fatalf("pooled after a partial read: got %d, want 0", got)
	}
	if _, body, err := doGet(t, tr, context.Background(), addr); err != nil || body != "0123456789" {
		t.Fatalf("next request: got %q, %v", body, err)
	}
	if got := s.conns.Load(); got != 2 {
		t.Fatalf("connections opened: got %d, want 2", got)
	}
}

func TestTransportIdleTimeout(t *testing.T) {
	s := newRawServer(t, serveOK)
	addr := s.ln.Addr().String()
	tr := newTestTransport(addr)
	defer tr.CloseIdleConnections()
	// The transport's sweeper may read the clock from its own goroutine.
	var clock atomic.Int64
	clock.Store(time.Unix(1000, 0).UnixNano())
	tr.now = func() time.Time { return time.Unix(0, clock.Load()) }
	advance := func(d time.Duration) { clock.Add(int64(d)) }
	tr.idleTimeout = time.Hour
	if _, _, err := doGet(t, tr, context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	advance(30 * time.Minute)
	if _, _, err := doGet(t, tr, context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	if got := s.conns.Load(); got != 1 {
		t.Fatalf("within the idle timeout: got %d connections, want 1", got)
	}
	advance(2 * time.Hour)
	if _, _, err := doGet(t, tr, context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	if got := s.conns.Load(); got != 2 {
		t.Fatalf("past the idle timeout: got %d connections, want 2", got)
	}
	advance(2 * time.Hour)
	tr.sweepIdle()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if got := len(tr.idle); got != 0 {
		t.Fatalf("after a sweep past the timeout: got %d idle, want 0", got)
	}
}

func TestTransportPoolBounded(t *testing.T) {
	s := newRawServer(t, serveOK)
	addr := s.ln.Addr().String()
	tr := newTestTransport(addr)
	tr.maxIdle = 2
	defer tr.CloseIdleConnections()
	var resps []*http.Response
	for range 4 {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resps = append(resps, resp)
	}
	for _, r := range resps {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	if got := len(tr.idle); got != 2 {
		t.Fatalf("idle connections: got %d, want 2", got)
	}
}

type recordingRT struct{ got *http.Request }

func (r *recordingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	r.got = req
	return &http.Response{StatusCode: http.StatusSwitchingProtocols, Body: http.NoBody, Request: req}, nil
}

func TestTransportUpgradeUsesFallback(t *testing.T) {
	fb := &recordingRT{}
	tr := newTestTransport("127.0.0.1:1")
	tr.fallback = fb
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:1/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if fb.got != req || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade not handed to the fallback transport: got %v", fb.got)
	}
}

// stallingServer answers every request with half of a 10-byte body, then
// nothing until the test ends.
func stallingServer(t *testing.T) *rawServer {
	release := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
		<-release
	})
	// Registered after newRawServer's cleanup, so it runs first: the
	// handlers return before the server waits for them.
	t.Cleanup(func() { close(release) })
	return s
}

// An upstream that stops mid-body is cut after the stall timeout, the
// failure is reported as the upstream's, and the connection is not pooled.
func TestTransportStalledBody(t *testing.T) {
	s := stallingServer(t)
	tr := newTestTransport(s.ln.Addr().String())
	tr.stallTimeout = 50 * time.Millisecond
	var reported []error
	tr.bodyError = func(err error) { reported = append(reported, err) }
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.ln.Addr().String()+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ne net.Error
	if string(b) != "01234" || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("body: got %q, %v; want the 5 bytes sent and a timeout", b, err)
	}
	if len(reported) != 1 || !errors.As(reported[0], &ne) || !ne.Timeout() {
		t.Fatalf("body errors reported: got %v, want the one timeout", reported)
	}
	if got := len(tr.idle); got != 0 {
		t.Fatalf("pooled after a stalled body: got %d, want 0", got)
	}
}

// A body the client abandons is not the upstream's failure.
func TestTransportCancelledBodyNotReported(t *testing.T) {
	s := stallingServer(t)
	tr := newTestTransport(s.ln.Addr().String())
	tr.stallTimeout = time.Minute
	var reported atomic.Int64
	tr.bodyError = func(error) { reported.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.ln.Addr().String()+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := resp.Body.Read(buf); err == nil {
		t.Fatal("read after cancel: got no error")
	}
	resp.Body.Close()
	if n := reported.Load(); n != 0 {
		t.Fatalf("body errors reported after the client cancelled: got %d, want 0", n)
	}
}

// An upstream that stops reading a request body fails the write after the
// stall timeout, instead of blocking it for as long as the client sends.
func TestTransportStalledUpload(t *testing.T) {
	release := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		br.ReadString('\n') // the request line, and then nothing more
		<-release
	})
	defer close(release)
	tr := newTestTransport(s.ln.Addr().String())
	tr.stallTimeout = 50 * time.Millisecond
	// Far more than the socket buffers hold, from a reader that never
	// ends before the transport gives up.
	body := io.LimitReader(zeroReader{}, 1<<30)
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.ln.Addr().String()+"/upload", io.NopCloser(body))
	req.ContentLength = 1 << 30
	_, err := tr.RoundTrip(req)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("got %v, want a timeout", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// After a response-header timeout the connection is held until the app
// answers, and only then is the hold done.
func TestTransportHoldAfterTimeout(t *testing.T) {
	for _, end := range []string{"late answer", "app closes", "Close"} {
		t.Run(end, func(t *testing.T) {
			release := make(chan struct{})
			s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
				http.ReadRequest(br)
				<-release
				if end == "late answer" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
					br.ReadByte() // until lanegate closes
				}
			})
			tr := newTestTransport(s.ln.Addr().String())
			tr.responseHeaderTimeout = 50 * time.Millisecond
			tr.holdAfterTimeout = time.Minute
			_, _, err := doGet(t, tr, context.Background(), s.ln.Addr().String())
			var h *Hold
			var ne net.Error
			if !errors.As(err, &h) || !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("got %v, want a held timeout", err)
			}
			done := make(chan struct{})
			h.OnDone(func() { close(done) })
			select {
			case <-done:
				t.Fatal("hold done before the app was")
			default:
			}
			switch end {
			case "Close":
				tr.Close()
				defer close(release)
			default:
				close(release)
			}
			select {
			case <-done:
			case <-time.After(testTimeout):
				t.Fatal("hold never done")
			}
			// Once done, OnDone runs at once.
			ran := false
			h.OnDone(func() { ran = true })
			if !ran {
				t.Error("OnDone after the end did not run its function")
			}
		})
	}
}

// A client that leaves once its request is sent does not end the app's
// work on it: the connection is held until the app answers, as after a
// timeout, and a late cancellation cannot cut the hold short.
func TestTransportHoldAfterClientLeaves(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		close(arrived)
		<-release
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
		br.ReadByte() // until lanegate closes
	})
	var once sync.Once
	finish := func() { once.Do(func() { close(release) }) }
	t.Cleanup(finish) // before the server's cleanup waits for its handler
	tr := newTestTransport(s.ln.Addr().String())
	tr.responseHeaderTimeout = time.Minute
	tr.holdAfterTimeout = time.Minute
	err := leaveOnArrival(t, tr, s.ln.Addr().String(), arrived)
	var h *Hold
	if !errors.As(err, &h) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want a hold of a cancelled request", err)
	}
	done := make(chan struct{})
	h.OnDone(func() { close(done) })
	select {
	case <-done:
		t.Fatal("hold done before the app was")
	default:
	}
	finish()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("hold never done")
	}
}

// Without a hold configured, a client that leaves frees everything at once.
func TestTransportNoHoldWhenOff(t *testing.T) {
	arrived := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		close(arrived)
		br.ReadByte()
	})
	tr := newTestTransport(s.ln.Addr().String())
	tr.responseHeaderTimeout = time.Minute
	err := leaveOnArrival(t, tr, s.ln.Addr().String(), arrived)
	var h *Hold
	if err == nil || errors.As(err, &h) {
		t.Fatalf("got %v, want an error that holds nothing", err)
	}
}

// leaveOnArrival sends a GET to addr through tr, cancels it once the
// server says it arrived, and returns the transport's error.
func leaveOnArrival(t *testing.T, tr http.RoundTripper, addr string, arrived <-chan struct{}) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, _, err := doGet(t, tr, ctx, addr)
		errc <- err
	}()
	<-arrived
	cancel()
	select {
	case err := <-errc:
		return err
	case <-time.After(testTimeout):
		t.Fatal("request not ended by its client leaving")
		return nil
	}
}

// A hold that would begin after Close ends at once: Close has already
// ended the others, and this one would outlive the proxy's shutdown.
func TestTransportNoHoldAfterClose(t *testing.T) {
	arrived, closed := make(chan struct{}), make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		close(arrived)
		br.ReadByte() // until lanegate closes
		close(closed)
	})
	tr := newTestTransport(s.ln.Addr().String())
	tr.responseHeaderTimeout = time.Minute
	tr.holdAfterTimeout = time.Minute
	shut := make(chan struct{})
	go func() {
		<-arrived
		tr.Close() // before the client leaves
		close(shut)
	}()
	err := leaveOnArrival(t, tr, s.ln.Addr().String(), shut)
	var h *Hold
	if !errors.As(err, &h) {
		t.Fatalf("got %v, want a hold", err)
	}
	done := make(chan struct{})
	h.OnDone(func() { close(done) })
	for _, ch := range []chan struct{}{done, closed} {
		select {
		case <-ch:
		case <-time.After(testTimeout):
			t.Fatal("a hold begun after Close was kept")
		}
	}
}
