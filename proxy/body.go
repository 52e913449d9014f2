package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/metrics"
	"github.com/lanegate/lanegate/reply"
)

// bodyBufferStart is the first buffer a request body is read into before
// admission. Most bodies buffered are login forms of a few hundred bytes,
// which fit; a larger body doubles it as its bytes arrive.
const bodyBufferStart = 512

// bodyBuffers accounts for the memory of the request bodies read before
// admission, and bounds it. A body reserves each buffer before it
// allocates it, as its bytes arrive, and gives it back once its bytes are
// forwarded, its body closed, or its request over, whichever comes first.
// At the bound a body streams instead, as a larger one always does: the
// request loses the slot-free wait buffering gives it, never its answer.
type bodyBuffers struct {
	// limit bounds the bytes held at once; 0 means no bound.
	limit int64
	held  atomic.Int64
}

// reserve takes n bytes under the bound and reports whether it could;
// when it could not, it took nothing.
func (bb *bodyBuffers) reserve(n int64) bool {
	if bb.limit <= 0 {
		bb.held.Add(n)
		return true
	}
	for {
		cur := bb.held.Load()
		if cur+n > bb.limit {
			return false
		}
		if bb.held.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// release gives back n bytes reserve took.
func (bb *bodyBuffers) release(n int64) { bb.held.Add(-n) }

// inUse is how many bytes bodies hold now.
func (bb *bodyBuffers) inUse() int64 { return bb.held.Load() }

// read reads r's body, of a known and small length, into memory and
// replaces it with the copy, which it returns. Reading it to its end is
// what makes Go's server watch the connection, so a client that leaves
// while queued cancels its request at once; and the body's pace is the
// client's alone before any slot is taken.
//
// The buffer grows with the bytes that arrive, never ahead of them from
// the announced length: a client that announces a large body and sends
// nothing would otherwise pin that much memory for the price of a
// connection. When the bound leaves no room for the buffer to grow, the
// body is left to stream from where the reading stopped, and read returns
// what it holds of it, or nil and no error when it holds nothing.
func (bb *bodyBuffers) read(r *http.Request) (*memBody, error) {
	size := min(r.ContentLength, bodyBufferStart)
	if !bb.reserve(size) {
		return nil, nil
	}
	buf := make([]byte, 0, size)
	fail := func(err error) (*memBody, error) {
		bb.release(int64(cap(buf)))
		return nil, err
	}
	eof := false
	for !eof && int64(len(buf)) < r.ContentLength {
		if len(buf) == cap(buf) {
			grow := min(r.ContentLength, 2*int64(cap(buf)))
			if !bb.reserve(grow - int64(cap(buf))) {
				// What has arrived goes first; the rest streams.
				m := &memBody{b: buf, rest: r.Body, bufs: bb, held: int64(cap(buf))}
				r.Body = m
				return m, nil
			}
			buf = append(make([]byte, 0, grow), buf...)
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err == nil:
		case err == io.EOF && int64(len(buf)) == r.ContentLength:
			eof = true
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return fail(&clientBodyError{err: io.ErrUnexpectedEOF})
		default:
			return fail(err)
		}
	}
	if !eof {
		// Every announced byte is in, but not the body's EOF, which is
		// when the server starts watching: a read past the end finds it.
		var probe [1]byte
		switch n, err := io.ReadFull(r.Body, probe[:]); {
		case n > 0:
			return fail(&clientBodyError{err: errors.New("body longer than its Content-Length")})
		case err != io.EOF:
			return fail(err)
		}
	}
	r.Body.Close()
	m := &memBody{b: buf, bufs: bb, held: int64(cap(buf))}
	r.Body = m
	return m, nil
}

// memBody is a request body read into memory before admission, followed,
// when the bound on buffered bodies cut the reading short, by the rest of
// the body still to be read. Its buffer stays reserved until the last of
// its bytes is read, the body is closed, or the request ends.
//
// Read and Close may be called from different goroutines (the upstream
// transport's and the handler's): Close touches only the reservation.
type memBody struct {
	b    []byte
	off  int
	rest io.ReadCloser // nil when b is the whole body

	bufs  *bodyBuffers
	held  int64 // bytes reserved for b
	freed atomic.Bool
}

func (m *memBody) Read(p []byte) (int, error) {
	if m.off < len(m.b) {
		n := copy(p, m.b[m.off:])
		m.off += n
		return n, nil
	}
	if m.b != nil {
		// Every byte is on its way upstream: the buffer is garbage now,
		// though the request may go on for long.
		m.b = nil
		m.free()
	}
	if m.rest != nil {
		return m.rest.Read(p)
	}
	return 0, io.EOF
}

func (m *memBody) Close() error {
	m.free()
	if m.rest != nil {
		return m.rest.Close()
	}
	return nil
}

// free gives the buffer's reservation back, once however often it is
// called.
func (m *memBody) free() {
	if m.freed.CompareAndSwap(false, true) {
		m.bufs.release(m.held)
	}
}

// Kinds of request-body failures, which are the client's, not the
// upstream's.
const (
	kindClientBody        = "client_body"
	kindClientBodyTimeout = "client_body_timeout"
)

// clientBody bounds each pause in a request body: before every read the
// connection's read deadline is set timeout ahead, so a client that stalls
// mid-upload frees its slot after timeout instead of holding it until it
// disconnects. Its errors are clientBodyErrors, so a broken or stalled body
// is answered as the client's fault (400, 408), not as an upstream failure.
//
// net/http's transport may go on reading a body in a goroutine of its own
// after the round trip, even after the handler returned and its pooled
// recorder went to the next request: end, called by the handler as it
// finishes, stops the body from touching the connection through rc from
// then on.
type clientBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration

	mu    sync.Mutex
	done  bool // the whole body is in
	ended bool // the handler has returned
}

func (b *clientBody) Read(p []byte) (int, error) {
	b.deadline(time.Now().Add(b.timeout), false)
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		// The whole body is in: the connection's own timeouts apply again
		// while the upstream answers.
		b.deadline(time.Time{}, true)
	case err != nil:
		var mbe *http.MaxBytesError
		if !errors.As(err, &mbe) {
			err = &clientBodyError{err: err}
		}
	}
	return n, err
}

// deadline sets the connection's read deadline to t while the body is
// still being read and the handler has not returned; last marks the body
// done.
func (b *clientBody) deadline(t time.Time, last bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done || b.ended {
		return
	}
	// A connection that cannot take deadlines (a test recorder) is read
	// without one.
	_ = b.rc.SetReadDeadline(t)
	b.done = last
}

// end is called as the handler returns.
func (b *clientBody) end() {
	b.mu.Lock()
	b.ended = true
	b.mu.Unlock()
}

// clientBodyError is a failure reading the client's request body.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }
func (e *clientBodyError) timeout() bool { return errors.Is(e.err, os.ErrDeadlineExceeded) }

// bodyError answers a request whose body could not be read before
// admission: the client's fault, and the connection is closed, since what
// follows on it cannot be trusted to be a request.
func (h *Handler) bodyError(rec *recorder, r *http.Request, err error) {
	ev := &rec.ev
	h.metrics.BodyError(ev.class.label())
	ev.decision = metrics.DecisionBodyError
	status, msg, kind := classifyUpstreamError(err)
	switch kind {
	case kindClientBody, kindClientBodyTimeout:
		h.metrics.ClientBodyError()
	case "body_too_large":
	default:
		status, msg = http.StatusBadRequest, "bad request body"
		h.metrics.ClientBodyError()
	}
	h.log.Debug("client body error", zap.String("path", h.logPath(r.URL.Path)), zap.Error(err))
	rec.Header().Set("Connection", "close")
	reply.Error(rec, r, status, msg)
	h.finish(rec, r, time.Now())
}
