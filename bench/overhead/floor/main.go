// Command floor is the smallest HTTP/1.1 reverse proxy that can be built on
// net/http's server: the "go-floor" contender of the overhead benchmark. It
// is a measuring stick, not a product.
//
// Per request, the handler takes a keep-alive upstream connection from a
// LIFO pool, writes a clone of the request to it through a bufio.Writer,
// reads the response with http.ReadResponse through a bufio.Reader, copies
// status, headers and body to the client, and returns the connection to the
// pool. There is no admission, no classification, no logging, no deadline
// and no cancellation. Whatever latency it adds over the upstream alone is
// the cost of net/http's server plus one forwarding hop on the same
// goroutine, which is the floor for any proxy built on net/http's server.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

type conn struct {
	net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	reused bool
}

// pool is a LIFO pool of idle upstream connections.
type pool struct {
	addr    string
	maxIdle int

	mu   sync.Mutex
	idle []*conn
}

func (p *pool) get() (*conn, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		c.reused = true
		return c, nil
	}
	p.mu.Unlock()
	nc, err := net.DialTimeout("tcp", p.addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: nc, br: bufio.NewReaderSize(nc, 16<<10), bw: bufio.NewWriterSize(nc, 8<<10)}, nil
}

func (p *pool) put(c *conn) {
	if c.br.Buffered() > 0 { // bytes after the response: do not reuse
		c.Close()
		return
	}
	p.mu.Lock()
	if len(p.idle) >= p.maxIdle {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// hopHeaders are connection-specific and not forwarded either way.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

type proxy struct {
	pool *pool
	host string // upstream host:port
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(r.Context())
	out.URL.Scheme = "http"
	out.URL.Host = p.host
	out.RequestURI = ""
	out.Close = false // keep the upstream connection alive whatever the client does
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	// A request without a body can be replayed once on a fresh connection
	// if a pooled one turns out to have been closed by the upstream.
	replayable := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	for attempt := 0; ; attempt++ {
		c, err := p.pool.get()
		if err != nil {
			http.Error(w, "bad gateway", http.StatusBadGateway)
			return
		}
		resp, err := roundTrip(c, out)
		if err != nil {
			c.Close()
			if c.reused && replayable && attempt == 0 {
				continue
			}
			http.Error(w, "bad gateway", http.StatusBadGateway)
			return
		}
		p.relay(w, c, resp)
		return
	}
}

func roundTrip(c *conn, out *http.Request) (*http.Response, error) {
	// Write sends the body with its Content-Length (or chunked if unknown).
	if err := out.Write(c.bw); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	for {
		resp, err := http.ReadResponse(c.br, out)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				resp.Body.Close()
				return nil, errors.New("floor: upgrades are not supported")
			}
			continue // interim response; the final one follows
		}
		return resp, nil
	}
}

func (p *proxy) relay(w http.ResponseWriter, c *conn, resp *http.Response) {
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	if resp.ContentLength >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, resp.Body)
	if err != nil {
		// The client or the upstream failed mid-body: the connection's
		// state is unknown.
		c.Close()
		return
	}
	resp.Body.Close()
	if resp.Close {
		c.Close()
		return
	}
	p.pool.put(c)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18084", "address to listen on")
	upstream := flag.String("upstream", "127.0.0.1:18000", "upstream host:port (plain HTTP/1.1)")
	maxIdle := flag.Int("maxidle", 256, "idle upstream connections kept")
	flag.Parse()

	p := &proxy{pool: &pool{addr: *upstream, maxIdle: *maxIdle}, host: *upstream}
	srv := &http.Server{
		Addr:              *listen,
		Handler:           p,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()

	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}
}
