package proxy

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"strings"

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

	// body is the request's body when its pauses are bounded; it may
	// outlive the request (see clientBody).
	body *clientBody

	// ev is what the access log will say of the request.
	ev event

	// hold is set when the upstream timed out on the request while the
	// app may still be working on it.
	hold *upstream.Hold

	// bufs, when set, allows the response body to be buffered (see
	// upstream.Buffers); buffering says it is being, into buf.
	bufs      *upstream.Buffers
	buffering bool
	buf       upstream.Buffer

	// upstreamDone is set once the request's slot is released.
	upstreamDone bool
	// upstreamFailed says the upstream refused the request or failed
	// before answering it.
	upstreamFailed bool

	// buffered is the request's body read before admission, whose
	// memory is given back when the request ends at the latest; nil when
	// none was.
	buffered *memBody

	// permit is the forwarded request's slot, told when the response
	// turns the connection into an upgrade.
	permit *admission.Permit
}

func (r *recorder) reset(w http.ResponseWriter) {
	r.ResponseWriter, r.status, r.bytes = w, 0, 0
	r.sessions, r.sess, r.req = nil, nil, nil
	r.hold, r.body, r.buffered, r.permit = nil, nil, nil, nil
	if r.bufs != nil {
		r.buf.Release(r.bufs) // nothing is left unless the request failed
	}
	r.bufs, r.buffering, r.upstreamDone, r.upstreamFailed = nil, false, false, false
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
	r.learn(h, code)
	r.buffering = r.bufs != nil && bufferable(h, r.bufs)
	// Like nginx, which reads it too, lanegate keeps X-Accel-Buffering
	// between the app and itself.
	delete(h, "X-Accel-Buffering")
}

// learn has the session cache learn from response headers h, and removes
// Django's headers for lanegate from them.
func (r *recorder) learn(h http.Header, code int) {
	if r.sess != nil {
		r.sessions.Response(r.req.Context(), r.sess, h, code)
		return
	}
	// Without a session lookup nothing is learnt, but Django's headers for
	// lanegate must still never reach the client.
	delete(h, session.HeaderGrant)
	delete(h, session.HeaderRevoke)
}

// bufferable reports whether a response with headers h may be buffered:
// not an event stream, which must never be delayed, nor one the app asked
// not to buffer (X-Accel-Buffering: no, as for nginx), nor one announced
// larger than the buffer.
func bufferable(h http.Header, bufs *upstream.Buffers) bool {
	if bufs.PerResponse() <= 0 {
		return false
	}
	if v := h["X-Accel-Buffering"]; len(v) > 0 && strings.EqualFold(v[0], "no") {
		return false
	}
	if v := h["Content-Type"]; len(v) > 0 && isEventStream(v[0]) {
		return false
	}
	if v := h["Content-Length"]; len(v) > 0 {
		n, err := strconv.ParseInt(v[0], 10, 64)
		return err == nil && bufs.Fits(n)
	}
	return true
}

// isEventStream reports whether a Content-Type is text/event-stream,
// without the allocation lowering the whole value would cost on every
// response.
func isEventStream(ct string) bool {
	const es = "text/event-stream"
	ct = strings.TrimLeft(ct, " \t")
	return len(ct) >= len(es) && strings.EqualFold(ct[:len(es)], es)
}

// Write buffers b while the response is being buffered and fits; past
// that it relays what was buffered, then b and the rest, unbuffered.
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.headers(http.StatusOK)
		r.status = http.StatusOK
	}
	if r.buffering {
		if r.buf.Append(r.bufs, b) {
			return len(b), nil
		}
		r.buffering = false
		if err := r.drain(); err != nil {
			return 0, err
		}
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// drain writes what is buffered to the client, at the client's pace.
func (r *recorder) drain() error {
	n, err := r.buf.Drain(r.ResponseWriter, r.bufs)
	r.bytes += n
	return err
}

// FlushError flushes to the client, except while the response is
// buffered: then there is nothing of it to send yet.
func (r *recorder) FlushError() error {
	if r.buffering {
		return nil
	}
	if f, ok := r.ResponseWriter.(interface{ FlushError() error }); ok {
		return f.FlushError()
	}
	return http.NewResponseController(r.ResponseWriter).Flush()
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
