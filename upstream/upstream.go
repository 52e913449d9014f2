// Package upstream is how lanegate talks to the app server: an HTTP/1.1
// transport written for one gunicorn or runserver upstream, net/http's
// transport for an HTTPS one, and the timeouts that keep a hung or stalled
// app from holding a slot for ever.
//
// It knows nothing of lanes or admission: the proxy hands it requests it
// has admitted, and learns from a Hold when a timed-out request is still
// being worked on by the app.
package upstream

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Options configure a Transport. Zero durations mean "no limit" except
// where noted.
type Options struct {
	// URL is the app server's base URL (scheme and host).
	URL *url.URL
	// DialTimeout bounds connecting to the upstream; a refused or
	// unreachable upstream fails the round trip with a dial error.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// headers once the request is sent.
	ResponseHeaderTimeout time.Duration
	// StallTimeout bounds the upstream's silence once the exchange is
	// under way: a pause between response body bytes, or in reading the
	// request body.
	StallTimeout time.Duration
	// HoldAfterTimeout keeps a connection whose response headers timed out
	// open up to this long, to learn when the app is done with the request
	// (see Hold); zero gives up on it at once. Plain-HTTP upstreams only.
	HoldAfterTimeout time.Duration
	// Concurrency is how many requests are expected in flight at once (the
	// admission budget); the idle pool is sized from it.
	Concurrency int
	// IdleTimeout closes idle upstream connections. Keep it below the app
	// server's own keep-alive timeout (gunicorn: 2 s), or a POST may be sent
	// on a connection the server is closing and fail.
	IdleTimeout time.Duration
	// OnBodyError, when set, hears of a response body the upstream failed
	// mid-way (not one the client abandoned), which httputil.ReverseProxy
	// only logs. Plain-HTTP upstreams only.
	OnBodyError func(err error)
}

// Transport is an http.RoundTripper to the one upstream.
type Transport interface {
	http.RoundTripper
	// CloseIdleConnections closes every pooled connection.
	CloseIdleConnections()
	// Close closes idle connections and ends every Hold at once, for a
	// shutdown that will not wait for a hung app.
	Close()
}

// New returns the synchronous HTTP/1.1 transport for a plain-HTTP upstream,
// the usual case of gunicorn or runserver on the same host or network, and
// net/http's transport for an HTTPS one.
func New(opts Options) Transport {
	std := newStd(opts)
	if opts.URL.Scheme != "http" {
		return stdTransport{std}
	}
	return &h1Transport{
		dial:                  (&net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		addr:                  hostPort(opts.URL),
		responseHeaderTimeout: opts.ResponseHeaderTimeout,
		stallTimeout:          opts.StallTimeout,
		holdAfterTimeout:      opts.HoldAfterTimeout,
		idleTimeout:           opts.IdleTimeout,
		maxIdle:               idleConns(opts),
		fallback:              std,
		bodyError:             opts.OnBodyError,
	}
}

// Probe opens and closes one connection to the upstream: whether it
// accepts connections at all, for a readiness check.
func Probe(ctx context.Context, u *url.URL) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", hostPort(u))
	if err != nil {
		return err
	}
	return c.Close()
}

// hostPort is u's host with the scheme's port when it names none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// idleConns is how many idle upstream connections are kept. Enforce mode
// never has more than the budget in flight, but bypassed requests and
// modes shadow and off do; an idle pool smaller than the concurrency closes
// and redials connections on every burst. Idle connections cost little and
// are closed after IdleTimeout.
func idleConns(opts Options) int { return max(opts.Concurrency*4, 256) }

// stdTransport is net/http's transport, for an HTTPS upstream and for
// protocol upgrades.
type stdTransport struct{ *http.Transport }

// Close closes idle connections; net/http's transport holds none after a
// timeout.
func (t stdTransport) Close() { t.CloseIdleConnections() }

func newStd(opts Options) *http.Transport {
	dialer := &net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	if opts.StallTimeout > 0 {
		// net/http's transport has no timeout for a response body (or a
		// WebSocket) that stops mid-way; bounding every read and write of
		// the connection does it. It must not cut the wait for headers
		// short, which has its own bound.
		d := max(opts.StallTimeout, opts.ResponseHeaderTimeout)
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &stallConn{Conn: c, d: d}, nil
		}
	}
	idle := max(opts.Concurrency, 2)
	return &http.Transport{
		Proxy:                 nil, // never route app traffic through an environment proxy
		DialContext:           dial,
		MaxIdleConns:          idle * 2,
		MaxIdleConnsPerHost:   idle * 2,
		IdleConnTimeout:       opts.IdleTimeout,
		ResponseHeaderTimeout: opts.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass the app's encoding through untouched
		ForceAttemptHTTP2:     false,
	}
}

// stallConn bounds each read and write on an upstream connection that
// net/http's transport owns.
type stallConn struct {
	net.Conn
	d time.Duration
}

func (c *stallConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.d))
	return c.Conn.Read(p)
}

func (c *stallConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.d))
	return c.Conn.Write(p)
}
