package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"
)

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
