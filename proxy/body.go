package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/metrics"
	"github.com/lanegate/lanegate/reply"
)

// bufferBody reads r's body, of a known and small length, into memory and
// replaces it with the copy. Reading it to its end is what makes Go's
// server watch the connection, so a client that leaves while queued
// cancels its request at once; and the body's pace is the client's alone
// before any slot is taken.
func bufferBody(r *http.Request) error {
	// One byte more than announced: the read that comes up short ends at
	// the body's EOF, which is when the server starts watching.
	buf := make([]byte, r.ContentLength+1)
	n, err := io.ReadFull(r.Body, buf)
	switch {
	case int64(n) == r.ContentLength && err == io.ErrUnexpectedEOF:
	case err == nil:
		return &clientBodyError{err: errors.New("body longer than its Content-Length")}
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		return &clientBodyError{err: io.ErrUnexpectedEOF}
	default:
		return err
	}
	r.Body.Close()
	r.Body = &memBody{b: buf[:n]}
	return nil
}

// memBody is a request body already in memory.
type memBody struct {
	b   []byte
	off int
}

func (m *memBody) Read(p []byte) (int, error) {
	if m.off >= len(m.b) {
		return 0, io.EOF
	}
	n := copy(p, m.b[m.off:])
	m.off += n
	return n, nil
}

func (m *memBody) Close() error { return nil }

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
