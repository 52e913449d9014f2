package redistest

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FaultProxy is a loopback TCP proxy in front of a Redis (or any TCP
// server) that injects faults a test switches at run time:
//
//   - latency, per direction: every chunk read from one side is written to
//     the other no sooner than the latency after it was read, in order,
//     without holding back the chunks read after it;
//   - a cut: every connection is closed and new ones are closed on accept,
//     as with a server that is unreachable.
//
// When either side of a connection hangs up, the proxy closes the other at
// once and drops what it still held back: like a link whose packets in
// flight are lost when the peer gives up. So a command that timed out at
// the client never reaches the server, and the server keeps its data as it
// was.
type FaultProxy struct {
	t      testing.TB
	target string
	ln     net.Listener

	toServer, toClient atomic.Int64 // latency, ns

	mu     sync.Mutex
	conns  map[*faultConn]struct{}
	cut    bool // under mu, so no connection is added after Cut took its list
	closed bool
	wg     sync.WaitGroup
}

// faultConn is one client connection and its server connection.
type faultConn struct {
	client net.Conn
	gone   chan struct{} // closed when either side is done

	mu     sync.Mutex
	server net.Conn // nil until dialed
	done   bool
}

// close closes both sides, once.
func (c *faultConn) close() {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done = true
	close(c.gone)
	server := c.server
	c.mu.Unlock()
	_ = c.client.Close()
	if server != nil {
		_ = server.Close()
	}
}

// setServer attaches the server connection, unless c is closed already.
func (c *faultConn) setServer(server net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return false
	}
	c.server = server
	return true
}

// NewFaultProxy listens on a free 127.0.0.1 port and forwards every
// connection to target. It closes, with all its connections, when the test
// ends.
func NewFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: fault proxy: %v", err)
	}
	p := &FaultProxy{t: t, target: target, ln: ln, conns: map[*faultConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *FaultProxy) Addr() string { return p.ln.Addr().String() }

// URL is a redis:// URL of database 0 through the proxy.
func (p *FaultProxy) URL() string { return "redis://" + p.Addr() + "/0" }

// SetLatency delays what the client sends by toServer and what the server
// sends by toClient, from now on: chunks already held back keep theirs.
func (p *FaultProxy) SetLatency(toServer, toClient time.Duration) {
	p.toServer.Store(int64(toServer))
	p.toClient.Store(int64(toClient))
}

// Cut closes every connection, dropping what is in flight, and closes new
// ones as soon as they are accepted, until Heal.
func (p *FaultProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
	p.DropConns()
}

// Heal ends every fault: no latency, connections accepted again. The
// connections open now are dropped with what they held back, as a healed
// link's peers would long have given up on them.
func (p *FaultProxy) Heal() {
	p.SetLatency(0, 0)
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
	p.DropConns()
}

// DropConns closes every open connection, dropping what is in flight.
func (p *FaultProxy) DropConns() {
	p.mu.Lock()
	conns := make([]*faultConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Conns reports how many connections are open through the proxy.
func (p *FaultProxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops accepting, closes every connection and waits until all of
// the proxy's goroutines have ended. Closing again does nothing.
func (p *FaultProxy) Close() {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	if !already {
		_ = p.ln.Close()
		p.DropConns()
	}
	p.wg.Wait()
}

func (p *FaultProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.t.Logf("redistest: fault proxy: accept: %v", err)
			}
			return
		}
		c := &faultConn{client: client, gone: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = client.Close()
			return
		}
		if p.cut {
			p.mu.Unlock()
			_ = client.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

// serve dials the target for c and pipes both ways until either side ends.
func (p *FaultProxy) serve(c *faultConn) {
	defer p.wg.Done()
	defer func() {
		c.close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return // the target is down: the client sees its connection closed
	}
	if !c.setServer(server) { // dropped while dialing
		_ = server.Close()
		return
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(c, server, c.client, &p.toServer) }()
	go func() { defer wg.Done(); p.pipe(c, c.client, server, &p.toClient) }()
	wg.Wait()
}

// chunk is bytes read from one side and when they may be written to the
// other.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, holding every chunk back by the latency in force
// when it was read. A reader and a writer goroutine, so that chunks read
// later are not delayed by the wait for earlier ones. Either side failing
// closes the whole connection.
func (p *FaultProxy) pipe(c *faultConn, dst, src net.Conn, latency *atomic.Int64) {
	q := make(chan chunk, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ch := range q {
			if d := time.Until(ch.due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-c.gone:
					t.Stop()
				}
			}
			select {
			case <-c.gone:
				continue // dropped; drain q until the reader stops
			default:
			}
			if _, err := dst.Write(ch.b); err != nil {
				c.close()
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			ch := chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(time.Duration(latency.Load()))}
			select {
			case q <- ch:
			case <-c.gone:
			}
		}
		if err != nil {
			break
		}
	}
	c.close()
	close(q)
	wg.Wait()
}
