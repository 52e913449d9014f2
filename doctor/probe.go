package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// threads checks that the app server works on more requests at once than
// lanegate admits. Every admitted request needs a worker thread; with
// fewer, the excess waits in gunicorn's accept queue, unseen by lanegate
// and still holding its slot. One more than the budget is asked for,
// because the requests lanegate bypasses (LANEGATE_BYPASS_PATHS) need
// threads too, outside the budget.
//
// gunicorn's sync and gthread workers give a connection a thread as soon
// as they take it, and the thread reads the request head to its end. So
// the probe holds budget connections, each having sent a request head
// without its final blank line, then asks for the URL on one more: an
// answer means a thread was still free. The held connections are closed
// before the probe returns; the probe holds the app's threads for at most
// Options.Timeout.
//
// The measure is exact for sync workers and for one gthread worker. Each
// of several gthread workers takes connections whether or not it has a
// thread free, so how the kernel spreads them decides where the last one
// waits: near budget+1 threads in all, the verdict can err either way.
func (d *run) threads(ctx context.Context) {
	want := d.limits.Budget + 1
	if d.opts.App == nil {
		d.add(Warn, checkThreads, fmt.Sprintf("unknown (give --app URL to measure): the app server needs at least %d worker threads, budget %d + 1", want, d.limits.Budget), "")
		return
	}
	p, err := newProbe(d.opts.App, d.opts.Timeout)
	if err != nil {
		d.add(Warn, checkThreads, "not measured: "+err.Error(), "give --app gunicorn's own http:// address")
		return
	}
	threadsFix := fmt.Sprintf("give gunicorn at least %d threads in all (--workers × --threads, with --worker-class gthread), or lower the budget", want)
	switch answered, err := p.request(ctx); {
	case err != nil:
		d.add(Fail, checkThreads, fmt.Sprintf("the app at %s did not answer one request: %v", p.target, err), "check --app: gunicorn's own address, which LANEGATE_UPSTREAM names")
		return
	case !answered:
		d.add(Warn, checkThreads, fmt.Sprintf("not measured: the app at %s took over %s to answer one request on its own", p.target, p.timeout),
			"raise --timeout, or give --app a quicker path")
		return
	}
	held, err := p.hold(ctx, d.limits.Budget)
	defer closeAll(held)
	if err != nil {
		d.add(Warn, checkThreads, fmt.Sprintf("not measured: opened %d of %d connections to %s: %v", len(held), d.limits.Budget, p.target, err), "")
		return
	}
	switch answered, err := p.request(ctx); {
	case err != nil:
		d.add(Warn, checkThreads, fmt.Sprintf("not measured: with %d requests held, the app at %s failed one more: %v", len(held), p.target, err), "")
	case !answered:
		d.add(Fail, checkThreads, fmt.Sprintf("with %d requests held, the app at %s did not answer one more within %s: fewer than %d worker threads free (gunicorn --workers × --threads)",
			len(held), p.target, p.timeout, want), threadsFix)
	default:
		d.add(OK, checkThreads, fmt.Sprintf("the app at %s answered one more request while %d were held: room for at least %d at once, budget %d + 1",
			p.target, len(held), want, d.limits.Budget), "")
	}
}

// probe speaks just enough HTTP/1.1 to one app server to tell whether it
// has a free worker thread.
type probe struct {
	// addr is where to connect, host:port; target is the URL as shown.
	addr   string
	target string
	// head is a request head without its final blank line.
	head    string
	timeout time.Duration
}

func newProbe(u *url.URL, timeout time.Duration) (probe, error) {
	if u.Scheme != "http" {
		// A TLS handshake before the head would change nothing of the
		// measure, but gunicorn behind lanegate speaks plain HTTP.
		return probe{}, fmt.Errorf("--app %s: the probe speaks plain http only", u.Redacted())
	}
	if u.Host == "" {
		return probe{}, fmt.Errorf("--app %s: no host", u.Redacted())
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	target := *u
	target.User = nil
	return probe{
		addr:    addr,
		target:  target.String(),
		head:    "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: lanegate-doctor\r\nConnection: close\r\n",
		timeout: timeout,
	}, nil
}

// dial connects within the probe's timeout.
func (p probe) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var dialer net.Dialer
	return dialer.DialContext(ctx, "tcp", p.addr)
}

// request sends one whole request and reports whether the status line
// came back within the probe's timeout. Silence until then is not an
// error; anything else that stops the answer is.
func (p probe) request(ctx context.Context) (bool, error) {
	c, err := p.dial(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := c.SetDeadline(time.Now().Add(p.timeout)); err != nil {
		return false, err
	}
	if _, err := c.Write([]byte(p.head + "\r\n")); err != nil {
		return false, fmt.Errorf("sending the request: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil:
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading the answer: %w", err)
	case !strings.HasPrefix(line, "HTTP/"):
		return false, fmt.Errorf("the answer %q is not HTTP", strings.TrimSpace(line))
	}
	return true, nil
}

// hold opens n connections, each having sent a request head without its
// end, all within the probe's timeout, and returns those it opened: the
// caller closes them.
func (p probe) hold(ctx context.Context, n int) ([]net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	held := make([]net.Conn, 0, n)
	for range n {
		c, err := p.dial(ctx)
		if err != nil {
			return held, err
		}
		held = append(held, c)
		if err := c.SetWriteDeadline(time.Now().Add(p.timeout)); err != nil {
			return held, err
		}
		if _, err := c.Write([]byte(p.head)); err != nil {
			return held, fmt.Errorf("sending a request head: %w", err)
		}
	}
	return held, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}
