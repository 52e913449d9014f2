package proxy

import (
	"bufio"
	"net"
	"net/http"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/upstream"
)

// recorder remembers the status and size of a response for the access log
// and metrics. Handlers pool them: one per request would be an allocation
// on every request.
//
// The recorder is also where the upstream's response headers are seen
// before the client gets them: the session cache learns grants and
// revocations there and removes lanegate's own headers.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64

	// sessions and sess are set for a request whose session the cache
	// looked up; req is its request.
	sessions Sessions
	sess     *session.Request
	req      *http.Request

	// ev is what the access log will say of the request.
	ev event

	// hold is set when the upstream timed out on the request while the
	// app may still be working on it.
	hold *upstream.Hold

	// permit is the forwarded request's slot, told when the response
	// turns the connection into an upgrade.
	permit *admission.Permit
}

func (r *recorder) reset(w http.ResponseWriter) {
	r.ResponseWriter, r.status, r.bytes = w, 0, 0
	r.sessions, r.sess, r.req = nil, nil, nil
	r.hold, r.permit = nil, nil
}

func (r *recorder) WriteHeader(code int) {
	if code < 200 && code != http.StatusSwitchingProtocols {
		// An interim response (103 Early Hints) carries the upstream's
		// headers so far; Django's headers for lanegate stay out of it.
		stripLanegateHeaders(r.ResponseWriter.Header())
	}
	// 1xx responses are interim; the final status comes later.
	if r.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		if r.status == 0 {
			r.headers(code)
		}
		r.status = code
	}
	if code == http.StatusSwitchingProtocols {
		r.permit.Upgraded()
	}
	r.ResponseWriter.WriteHeader(code)
}

// headers runs once, on the final response headers.
func (r *recorder) headers(code int) {
	h := r.ResponseWriter.Header()
	if r.sess != nil {
		r.sessions.Response(r.req.Context(), r.sess, h, code)
		return
	}
	// Without a session lookup nothing is learnt, but Django's headers for
	// lanegate must still never reach the client.
	delete(h, session.HeaderGrant)
	delete(h, session.HeaderRevoke)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.headers(http.StatusOK)
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's Flush, which
// ReverseProxy uses for streaming.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack hands the connection over for a protocol switch. ReverseProxy
// hijacks only after the upstream answered 101 Switching Protocols, and
// writes that 101 to the connection itself, past WriteHeader, so it is
// recorded here.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil && r.status == 0 {
		r.status = http.StatusSwitchingProtocols
	}
	if err == nil {
		// From here the slot carries a connection, not a request the app
		// works on: it must not make the lane's waits look long.
		r.permit.Upgraded()
	}
	return c, brw, err
}

// bufferPool lends ReverseProxy its copy buffers; without one it allocates
// 32 KiB for every response. A channel rather than a sync.Pool, because
// putting a slice into a sync.Pool allocates a box for it every time.
type bufferPool struct{ ch chan []byte }

func newBufferPool() *bufferPool { return &bufferPool{ch: make(chan []byte, 256)} }

func (b *bufferPool) Get() []byte {
	select {
	case buf := <-b.ch:
		return buf
	default:
		return make([]byte, 32*1024)
	}
}

func (b *bufferPool) Put(buf []byte) {
	select {
	case b.ch <- buf:
	default: // enough are pooled; let this one go
	}
}
