package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Listener is the client listener. It accepts at most a fixed number of
// client connections at once, as HAProxy's maxconn does: at the limit it
// stops accepting, and further connections wait in the kernel's backlog.
// Slots already bound requests; this bounds what idle, slow or malicious
// connections can take before any request is read: file descriptors, and a
// goroutine and buffers each.
//
// It also bounds how long a client may accept no bytes, as nginx's
// send_timeout and HAProxy's timeout client do. Each write to the client
// (headers, body, a hijacked connection's tunnel) must make progress within
// SendTimeout; past it the write fails, the response is cut, and the slot
// of a response still relayed from the app is freed. Done here, on the
// connection, it covers every write net/http makes, including those after
// the handler returns, and leaves no deadline behind for the connection's
// next request.
type Listener struct {
	net.Listener
	sem   chan struct{}
	waits atomic.Uint64 // Accepts that found the limit reached
	done  chan struct{}
	once  sync.Once

	sendTimeout time.Duration
	// rearm is how stale a write deadline may grow before a write sets a
	// new one: setting one on every write costs a timer update each, and
	// a deadline T/8 early is still "no progress for about T".
	rearm        time.Duration
	sendTimeouts atomic.Uint64
}

// ListenerOptions configure a Listener.
type ListenerOptions struct {
	// MaxConns is how many connections may be open at once.
	MaxConns int
	// SendTimeout is how long a client may accept no bytes; zero means no
	// bound.
	SendTimeout time.Duration
}

// NewListener returns ln with opts' limits.
func NewListener(ln net.Listener, opts ListenerOptions) *Listener {
	return &Listener{
		Listener: ln, sem: make(chan struct{}, opts.MaxConns), done: make(chan struct{}),
		sendTimeout: opts.SendTimeout, rearm: opts.SendTimeout / 8,
	}
}

// SendTimeouts is how many client connections were cut for accepting no
// bytes for the send timeout.
func (l *Listener) SendTimeouts() uint64 { return l.sendTimeouts.Load() }

// Accept waits for a free place, then for a connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	default:
		l.waits.Add(1)
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &clientConn{Conn: c, l: l}, nil
}

// Close closes the listener and ends an Accept waiting for a place.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Open is the number of connections accepted and not yet closed.
func (l *Listener) Open() int { return len(l.sem) }

// Register exports the listener's state as metrics.
func (l *Listener) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lanegate_client_connections",
			Help: "Client connections open on the proxy listener.",
		}, func() float64 { return float64(l.Open()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lanegate_client_connections_max",
			Help: "LANEGATE_MAX_CONNS: client connections accepted at once.",
		}, func() float64 { return float64(cap(l.sem)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "lanegate_client_send_timeouts_total",
			Help: "Client connections cut because the client accepted no bytes for LANEGATE_CLIENT_SEND_TIMEOUT.",
		}, func() float64 { return float64(l.SendTimeouts()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "lanegate_client_connections_limited_total",
			Help: "Times the proxy listener stopped accepting because LANEGATE_MAX_CONNS connections were open.",
		}, func() float64 { return float64(l.waits.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// clientConn is one accepted connection: it gives its place back once
// closed, and bounds each write by the send timeout.
type clientConn struct {
	net.Conn
	l    *Listener
	once sync.Once
	// armed is when the write deadline was last set, in nanoseconds of
	// the Unix epoch; 0 when none is.
	armed    atomic.Int64
	timedOut atomic.Bool
}

// Write writes p, failing once the client has accepted nothing for the
// send timeout.
func (c *clientConn) Write(p []byte) (int, error) {
	if d := c.l.sendTimeout; d > 0 {
		now := time.Now()
		if armed := c.armed.Load(); armed == 0 || now.UnixNano()-armed > int64(c.l.rearm) {
			c.Conn.SetWriteDeadline(now.Add(d))
			c.armed.Store(now.UnixNano())
		}
	}
	n, err := c.Conn.Write(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !c.timedOut.Swap(true) {
		c.l.sendTimeouts.Add(1)
	}
	return n, err
}

// SetWriteDeadline sets the caller's deadline; with a send timeout, the
// next write arms the timeout's over it.
func (c *clientConn) SetWriteDeadline(t time.Time) error {
	c.armed.Store(0)
	return c.Conn.SetWriteDeadline(t)
}

// Close closes the connection and gives its place back, once.
func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.l.sem })
	return err
}
