package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/metrics"
	"github.com/lanegate/lanegate/reply"
)

// bodyBufferStart is the first buffer a request body is read into before
// admission. Most bodies buffered are login forms of a few hundred bytes,
// which fit; a larger body doubles it as its bytes arrive.
const bodyBufferStart = 512

// bufferBody reads r's body, of a known and small length, into memory and
// replaces it with the copy. Reading it to its end is what makes Go's
// server watch the connection, so a client that leaves while queued
// cancels its request at once; and the body's pace is the client's alone
// before any slot is taken.
//
// The buffer grows with the bytes that arrive, never ahead of them from
// the announced length: a client that announces a large body and sends
// nothing would otherwise pin that much memory for the price of a
// connection.
func bufferBody(r *http.Request) error {
	// One byte more than announced: the read that comes up short ends at
	// the body's EOF, which is when the server starts watching.
	want := r.ContentLength + 1
	buf := make([]byte, 0, min(want, bodyBufferStart))
	for {
		if len(buf) == cap(buf) {
			if int64(cap(buf)) == want {
				return &clientBodyError{err: errors.New("body longer than its Content-Length")}
			}
			buf = append(make([]byte, 0, min(want, 2*int64(cap(buf)))), buf...)
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == nil {
			continue
		}
		if err != io.EOF && err != io.ErrUnexpectedEOF {
			return err
		}
		if int64(len(buf)) != r.ContentLength {
			return &clientBodyError{err: io.ErrUnexpectedEOF}
		}
		break
	}
	r.Body.Close()
	r.Body = &memBody{b: buf}
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
type clientBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	done    bool
}

func (b *clientBody) Read(p []byte) (int, error) {
	if !b.done {
		// A connection that cannot take deadlines (a test recorder) is
		// read without one.
		_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF && !b.done:
		// The whole body is in: the connection's own timeouts apply again
		// while the upstream answers.
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case err != nil && err != io.EOF:
		var mbe *http.MaxBytesError
		if !errors.As(err, &mbe) {
			err = &clientBodyError{err: err}
		}
	}
	return n, err
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
