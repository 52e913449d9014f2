package proxy

import (
	"bufio"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
)

// recorder remembers the status and size of a response for the access log
// and metrics. Handlers pool them: one per request would be an allocation
// on every request.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) reset(w http.ResponseWriter) {
	r.ResponseWriter, r.status, r.bytes = w, 0, 0
}

func (r *recorder) WriteHeader(code int) {
	// 1xx responses are interim; the final status comes later.
	if r.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
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
	return c, brw, err
}

// forwardedClient returns the nearest address in an X-Forwarded-For chain
// that is not a trusted proxy: entries right of it were added by proxies we
// trust, entries left of it are the client's own claims.
func forwardedClient(values []string, trusted func(a netip.Addr) bool) (string, bool) {
	for i := len(values) - 1; i >= 0; i-- {
		v := values[i]
		for v != "" {
			var part string
			if j := strings.LastIndexByte(v, ','); j >= 0 {
				part, v = v[j+1:], v[:j]
			} else {
				part, v = v, ""
			}
			part = strings.TrimSpace(part)
			a, err := netip.ParseAddr(part)
			if err != nil {
				return "", false // a malformed chain is not evidence of anything
			}
			a = a.Unmap()
			if !trusted(a) {
				return a.String(), true
			}
		}
	}
	return "", false
}

// bufferPool lends ReverseProxy its copy buffers; without one it allocates
// 32 KiB for every response.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(s []byte) { b.p.Put(&s) }
