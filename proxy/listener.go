package proxy

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// LimitListener accepts at most a fixed number of client connections at
// once, as HAProxy's maxconn does: at the limit it stops accepting, and
// further connections wait in the kernel's backlog. Slots already bound
// requests; this bounds what idle, slow or malicious connections can take
// before any request is read: file descriptors, and a goroutine and
// buffers each.
type LimitListener struct {
	net.Listener
	sem   chan struct{}
	waits atomic.Uint64 // Accepts that found the limit reached
	done  chan struct{}
	once  sync.Once
}

// NewLimitListener returns ln limited to max open connections.
func NewLimitListener(ln net.Listener, max int) *LimitListener {
	return &LimitListener{Listener: ln, sem: make(chan struct{}, max), done: make(chan struct{})}
}

// Accept waits for a free place, then for a connection.
func (l *LimitListener) Accept() (net.Conn, error) {
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
	return &limitConn{Conn: c, l: l}, nil
}

// Close closes the listener and ends an Accept waiting for a place.
func (l *LimitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Open is the number of connections accepted and not yet closed.
func (l *LimitListener) Open() int { return len(l.sem) }

// Register exports the listener's state as metrics.
func (l *LimitListener) Register(reg prometheus.Registerer) error {
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

type limitConn struct {
	net.Conn
	l    *LimitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.l.sem })
	return err
}
