package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// h1Transport is an HTTP/1.1 http.RoundTripper for the one upstream: it
// writes the request and reads the response on the calling goroutine, over
// a LIFO pool of keep-alive connections.
//
// http.Transport hands every request to two goroutines per connection (one
// writes, one reads) and back; on a small machine those wake-ups are most
// of a proxy's added latency. An upstream like gunicorn speaks plain
// HTTP/1.1 and answers one request at a time per connection, which needs
// none of that machinery.
//
// Requests asking for a protocol upgrade go to the fallback transport,
// which knows how to hand the connection over.
type h1Transport struct {
	dial                  func(ctx context.Context, network, addr string) (net.Conn, error)
	addr                  string // host:port
	responseHeaderTimeout time.Duration
	stallTimeout          time.Duration // zero: none
	// holdAfterTimeout, when positive, keeps a connection whose response
	// headers timed out open for that long, to learn when the app is done
	// with the request (see hold).
	holdAfterTimeout time.Duration
	idleTimeout      time.Duration
	maxIdle          int
	fallback         http.RoundTripper
	now              func() time.Time // time.Now; tests pass a fake
	// bodyError, when set, hears of a response body the upstream failed
	// mid-way (not one the client abandoned), which ReverseProxy only
	// logs.
	bodyError func(err error)

	mu    sync.Mutex // guards idle, sweep and held
	idle  []*h1Conn  // most recently used last
	sweep *time.Timer
	held  map[*h1Conn]struct{}
	// closed is set by Close: no hold is taken after it.
	closed bool
}

type h1Conn struct {
	net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	idleFrom time.Time
	reused   bool
	werr     error // the last write error on Conn
	// ctx is the current request's; stall is the transport's
	// stallTimeout. Each write is bounded by stall, and a cancellation
	// of ctx must win over a deadline set after it.
	ctx   context.Context
	stall time.Duration
	// dmu orders a cancellation's deadline against a hold's: once held
	// (see Hold), the connection is read for the app's answer, and a
	// cancellation running late must not cut that short.
	dmu  sync.Mutex
	held bool
}

// cancel makes whatever the connection is doing fail now, unless it is
// held.
func (c *h1Conn) cancel() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.held {
		c.SetDeadline(aLongTimeAgo)
	}
}

// connWriter is what the buffered writer writes to: it records write
// errors, which (*http.Request).Write would otherwise report as body read
// errors in a type callers cannot unwrap. Having no ReadFrom, it also keeps
// bufio from bypassing it.
type connWriter struct{ c *h1Conn }

func (w connWriter) Write(p []byte) (int, error) {
	c := w.c
	if c.stall > 0 {
		// An upstream that stops reading the request body would
		// otherwise block this write for as long as the client keeps
		// sending.
		c.Conn.SetWriteDeadline(time.Now().Add(c.stall))
		if err := c.ctx.Err(); err != nil {
			c.werr = err
			return 0, err
		}
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.werr = err
	}
	return n, err
}

// errServerClosedIdle marks a pooled connection the server closed while it
// sat idle; a request that had sent nothing on it may be retried.
var errServerClosedIdle = errors.New("upstream: closed an idle connection")

// aLongTimeAgo is a deadline that makes blocked reads and writes fail now.
var aLongTimeAgo = time.Unix(1, 0)

func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Upgrade") != "" {
		return t.fallback.RoundTrip(req)
	}
	replayable := isIdempotent(req.Method) && (req.Body == nil || req.Body == http.NoBody)
	for attempt := 0; ; attempt++ {
		c, err := t.get(req.Context())
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := t.roundTrip(c, req)
		if err == nil {
			return resp, nil
		}
		var held *Hold
		if errors.As(err, &held) {
			closeBody(req)
			return nil, err // the connection is the hold's now
		}
		c.Close()
		if errors.Is(err, errServerClosedIdle) && c.reused && replayable && attempt == 0 && req.Context().Err() == nil {
			continue
		}
		closeBody(req)
		return nil, err
	}
}

// isIdempotent reports whether sending the request twice is harmless. An
// upstream that drops a reused connection may have processed the request
// (gunicorn killing a slow worker looks the same as an idle close), so only
// these are ever sent again, as net/http's transport does.
func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

func (t *h1Transport) roundTrip(c *h1Conn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// A client that goes away unblocks whatever this connection is doing.
	stop := context.AfterFunc(ctx, c.cancel)
	// Writing is bounded only by the stall timeout, per write: the body
	// streams from the client at the client's pace, and a client that
	// gives up cancels ctx.
	c.werr = nil
	c.ctx, c.stall = ctx, t.stallTimeout
	if err := writeRequest(c.bw, req); err != nil {
		if c.werr == nil {
			stop()
			return nil, err // the client's body failed, not the upstream
		}
		// The upstream stopped reading. It may have answered early (a
		// 413 or 403 before the body's end) and closed; relay that answer
		// rather than a 502.
		if resp := t.earlyResponse(c, req); resp != nil {
			stop()
			return resp, nil
		}
		stop()
		return nil, t.wrap(c, c.werr)
	}
	if err := c.bw.Flush(); err != nil {
		stop()
		return nil, t.wrap(c, err)
	}
	// The response-header timeout starts once the request is sent, as in
	// net/http. Setting it may overwrite the deadline a cancellation just
	// set, so cancellation is checked after. Without one, a deadline the
	// previous response's body left must not apply.
	var headerDeadline time.Time
	if t.responseHeaderTimeout > 0 {
		headerDeadline = time.Now().Add(t.responseHeaderTimeout)
	}
	c.SetReadDeadline(headerDeadline)
	if err := ctx.Err(); err != nil {
		stop()
		if t.holdAfterTimeout > 0 {
			// Sent whole: the app works on it all the same (see below).
			return nil, t.hold(c, req.Method, err)
		}
		return nil, err
	}
	var resp *http.Response
	for {
		r, err := http.ReadResponse(c.br, req)
		if err != nil {
			stop()
			var ne net.Error
			if t.holdAfterTimeout > 0 && errors.As(err, &ne) && ne.Timeout() {
				if cerr := ctx.Err(); cerr != nil {
					// The client left after the whole request was
					// sent: the app works on it all the same, holding
					// its database connection, and so does the slot.
					return nil, t.hold(c, req.Method, cerr)
				}
				return nil, t.hold(c, req.Method, err)
			}
			return nil, t.wrap(c, err)
		}
		// Interim responses (100 Continue, 103 Early Hints) are not
		// relayed; the final response follows on the same connection.
		if r.StatusCode >= 100 && r.StatusCode < 200 && r.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		resp = r
		break
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// An upgrade the request did not ask for cannot be relayed here.
		stop()
		return nil, errors.New("upstream: unexpected 101 Switching Protocols")
	}
	c.SetDeadline(time.Time{})
	if ctx.Err() != nil {
		stop()
		return nil, ctx.Err()
	}
	keep := !resp.Close && !req.Close
	if resp.Body == http.NoBody {
		if stop() && keep {
			t.put(c)
		} else {
			c.Close()
		}
		return resp, nil
	}
	resp.Body = &h1Body{rc: resp.Body, c: c, t: t, stop: stop, keep: keep, ctx: ctx}
	return resp, nil
}

// Hold is the error of a request whose response headers timed
// out, or whose client left once it was sent, while the app may still be
// working on it. The app holds its
// database connection until it is done; a proxy that freed the request's
// slot at the 504 would admit another request into a pool the first still
// holds, and it would wait there (PgBouncer's query_wait_timeout) instead
// of in lanegate's queue. So the transport keeps the connection open and
// reads whatever the app sends, for up to holdAfterTimeout: the app's late
// answer, or its closing the connection (gunicorn killing the worker),
// says it is done. Then the callbacks given to OnDone run.
type Hold struct {
	err error

	mu     sync.Mutex
	done   bool
	onDone []func()
}

func (h *Hold) Error() string { return h.err.Error() }
func (h *Hold) Unwrap() error { return h.err }

// OnDone runs f once the app is done with the request, or at once if it
// already is.
func (h *Hold) OnDone(f func()) {
	h.mu.Lock()
	if h.done {
		h.mu.Unlock()
		f()
		return
	}
	h.onDone = append(h.onDone, f)
	h.mu.Unlock()
}

func (h *Hold) finish() {
	h.mu.Lock()
	h.done = true
	fs := h.onDone
	h.onDone = nil
	h.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// hold takes c over after its response headers timed out (see
// Hold) and returns the error for the request.
func (t *h1Transport) hold(c *h1Conn, method string, err error) *Hold {
	h := &Hold{err: err}
	t.mu.Lock()
	if t.closed {
		// Close has ended every hold already; one made after it, by a
		// request that ended as the proxy shut down, would outlive it.
		t.mu.Unlock()
		c.Close()
		h.finish()
		return h
	}
	if t.held == nil {
		t.held = make(map[*h1Conn]struct{})
	}
	t.held[c] = struct{}{}
	t.mu.Unlock()
	c.dmu.Lock()
	c.held = true
	c.SetDeadline(time.Now().Add(t.holdAfterTimeout))
	c.dmu.Unlock()
	go func() {
		// Only the method of the request matters to reading its response.
		if resp, err := http.ReadResponse(c.br, &http.Request{Method: method}); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		t.mu.Lock()
		delete(t.held, c)
		t.mu.Unlock()
		c.Close()
		h.finish()
	}()
	return h
}

// earlyResponse reads a response the upstream sent before it stopped
// reading the request, if one arrives within a second. The connection is
// not reused afterwards.
func (t *h1Transport) earlyResponse(c *h1Conn, req *http.Request) *http.Response {
	c.SetReadDeadline(time.Now().Add(time.Second))
	resp, err := http.ReadResponse(c.br, req)
	if err != nil || resp.StatusCode < 200 {
		return nil
	}
	c.SetReadDeadline(time.Time{})
	resp.Close = true
	if resp.Body != http.NoBody {
		resp.Body = &h1Body{rc: resp.Body, c: c, t: t, stop: func() bool { return true }, keep: false, ctx: req.Context()}
	} else {
		c.Close()
	}
	return resp
}

// writeRequest writes req, returning an error from reading its body as it
// is: (*http.Request).Write hides it in a type callers cannot unwrap, and a
// body over the size limit must stay an *http.MaxBytesError to become a 413.
// Write errors are recovered the same way, by connWriter.
func writeRequest(w io.Writer, req *http.Request) error {
	if req.Body == nil || req.Body == http.NoBody {
		return req.Write(w)
	}
	body := &readErrBody{rc: req.Body}
	out := *req // RoundTrip must not modify its request
	out.Body = body
	err := out.Write(w)
	if body.err != nil && err != nil {
		return body.err
	}
	return err
}

// readErrBody remembers the error its reader returned.
type readErrBody struct {
	rc  io.ReadCloser
	err error
}

func (b *readErrBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *readErrBody) Close() error { return b.rc.Close() }

// wrap turns a failure on a reused connection before any response byte
// into errServerClosedIdle, and keeps the original error for the log.
func (t *h1Transport) wrap(c *h1Conn, err error) error {
	if c.reused && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
		return fmt.Errorf("%w: %w", errServerClosedIdle, err)
	}
	return err
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// h1Body returns its connection to the pool once the body has been read to
// the end, and closes it otherwise.
type h1Body struct {
	rc   io.ReadCloser
	c    *h1Conn
	t    *h1Transport
	ctx  context.Context
	stop func() bool
	keep bool
	eof  bool
	done bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if d := b.t.stallTimeout; d > 0 {
		// Each read may wait at most d for the upstream: a body that
		// stops mid-way frees its slot instead of holding it for ever.
		b.c.SetReadDeadline(time.Now().Add(d))
		if err := b.ctx.Err(); err != nil {
			return 0, err // the deadline above must not undo a cancellation
		}
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	} else if err != nil && b.ctx.Err() == nil && b.t.bodyError != nil {
		b.t.bodyError(err)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	ok := b.stop()
	if !b.eof || !ok || !b.keep {
		// Close the connection first: closing an unfinished body would
		// otherwise read the rest of it just to throw it away.
		b.c.Close()
		b.rc.Close()
		return nil
	}
	b.rc.Close()
	b.t.put(b.c)
	return nil
}

func (t *h1Transport) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

// get returns a pooled connection that has not idled too long, or dials.
func (t *h1Transport) get(ctx context.Context) (*h1Conn, error) {
	now := t.clock()
	t.mu.Lock()
	for len(t.idle) > 0 {
		c := t.idle[len(t.idle)-1]
		t.idle[len(t.idle)-1] = nil
		t.idle = t.idle[:len(t.idle)-1]
		if t.idleTimeout > 0 && now.Sub(c.idleFrom) > t.idleTimeout {
			t.mu.Unlock()
			c.Close()
			t.mu.Lock()
			continue
		}
		t.mu.Unlock()
		c.reused = true
		return c, nil
	}
	t.mu.Unlock()
	nc, err := t.dial(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	c := &h1Conn{Conn: nc, br: bufio.NewReaderSize(nc, 16<<10)}
	c.bw = bufio.NewWriterSize(connWriter{c}, 8<<10)
	return c, nil
}

// put returns a connection to the pool, closing it when the pool is full.
func (t *h1Transport) put(c *h1Conn) {
	if c.br.Buffered() > 0 {
		// Bytes after the response: the server is confused; do not reuse.
		c.Close()
		return
	}
	c.idleFrom = t.clock()
	c.ctx = nil // do not keep a finished request's context alive
	t.mu.Lock()
	if len(t.idle) >= t.maxIdle {
		t.mu.Unlock()
		c.Close()
		return
	}
	t.idle = append(t.idle, c)
	if t.idleTimeout > 0 && t.sweep == nil {
		t.sweep = time.AfterFunc(t.idleTimeout, t.sweepIdle)
	}
	t.mu.Unlock()
}

// sweepIdle closes connections idle past the timeout, so a quiet proxy
// does not hold sockets the upstream has long closed.
func (t *h1Transport) sweepIdle() {
	now := t.clock()
	t.mu.Lock()
	var stale []*h1Conn
	keep := t.idle[:0]
	for _, c := range t.idle {
		if now.Sub(c.idleFrom) >= t.idleTimeout {
			stale = append(stale, c)
		} else {
			keep = append(keep, c)
		}
	}
	for i := len(keep); i < len(t.idle); i++ {
		t.idle[i] = nil
	}
	t.idle = keep
	t.sweep = nil
	if len(t.idle) > 0 {
		t.sweep = time.AfterFunc(t.idleTimeout, t.sweepIdle)
	}
	t.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
}

// Close closes idle connections and ends every hold at once: their slots
// are released, for a shutdown that will not wait for a hung app.
func (t *h1Transport) Close() {
	t.CloseIdleConnections()
	t.closeHeld()
}

func (t *h1Transport) closeHeld() {
	t.mu.Lock()
	t.closed = true
	held := make([]*h1Conn, 0, len(t.held))
	for c := range t.held {
		held = append(held, c)
	}
	t.mu.Unlock()
	for _, c := range held {
		c.Close()
	}
}

// CloseIdleConnections closes every pooled connection.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	if t.sweep != nil {
		t.sweep.Stop()
		t.sweep = nil
	}
	t.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
	if f, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		f.CloseIdleConnections()
	}
}
