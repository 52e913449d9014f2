package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lanegate/lanegate/admin"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every test; the race detector makes things slow.
const testTimeout = 30 * time.Second

// testContext returns the context that bounds a test.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// Both listeners ask the kernel for a free port.
const (
	proxyListen = "127.0.0.1:0"
	adminListen = "127.0.0.1:0"
)

// environ is a complete environment for serving in front of upstream, with
// extra ("KEY=VALUE") appended; a later entry wins over an earlier one.
func environ(upstream string, extra ...string) []string {
	return append([]string{
		"LANEGATE_LISTEN=" + proxyListen,
		"LANEGATE_ADMIN_LISTEN=" + adminListen,
		"LANEGATE_UPSTREAM=" + upstream,
		"LANEGATE_SHUTDOWN_TIMEOUT=10s",
	}, extra...)
}

// logBuffer collects an app's output. It is safe for concurrent use, and
// waitFor blocks until given text is written instead of polling.
type logBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.b.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return n, err
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Len is a mark for since and waitFor: the output written so far.
func (l *logBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// since returns what was written after mark.
func (l *logBuffer) since(mark int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b.Bytes()[mark:])
}

// waitFor waits until s is written after mark.
func (l *logBuffer) waitFor(ctx context.Context, t *testing.T, mark int, s string) {
	t.Helper()
	for {
		l.mu.Lock()
		found := strings.Contains(string(l.b.Bytes()[mark:]), s)
		changed := l.changed
		l.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("waiting for %q in the log: %v; log since then:\n%s", s, ctx.Err(), l.since(mark))
		}
	}
}

// instance is an app running in the background.
type instance struct {
	addrs  listenAddrs
	stdout *logBuffer
	stderr *logBuffer
	reload chan os.Signal
	cancel context.CancelFunc
	exited chan struct{}
	err    error // set before exited is closed
}

// start runs the app with args and environ until the test ends or stop is
// called, and returns once it is serving.
func start(ctx context.Context, t *testing.T, env []string, args ...string) *instance {
	t.Helper()
	actx, cancel := context.WithCancel(ctx)
	in := &instance{
		stdout: newLogBuffer(),
		stderr: newLogBuffer(),
		// Unbuffered: a send returns once the serve loop has taken it.
		reload: make(chan os.Signal),
		cancel: cancel,
		exited: make(chan struct{}),
	}
	started := make(chan listenAddrs, 1)
	a := app{
		stdout:  in.stdout,
		stderr:  in.stderr,
		environ: env,
		reload:  in.reload,
		started: func(addrs listenAddrs) { started <- addrs },
	}
	go func() {
		defer close(in.exited)
		in.err = a.run(actx, args)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-in.exited:
		case <-time.After(testTimeout):
			t.Errorf("app still running %v after the end of the test", testTimeout)
		}
	})
	select {
	case in.addrs = <-started:
	case <-in.exited:
		t.Fatalf("app exited at startup: %v\nstderr:\n%s", in.err, in.stderr)
	case <-ctx.Done():
		t.Fatalf("app did not start: %v\nstderr:\n%s", ctx.Err(), in.stderr)
	}
	return in
}

// wait waits for the app to return and returns its error.
func (in *instance) wait(ctx context.Context, t *testing.T) error {
	t.Helper()
	select {
	case <-in.exited:
		return in.err
	case <-ctx.Done():
		t.Fatalf("app did not return: %v\nstderr:\n%s", ctx.Err(), in.stderr)
		return nil
	}
}

// sighup delivers a reload signal and returns once the app has taken it.
func (in *instance) sighup(ctx context.Context, t *testing.T) {
	t.Helper()
	select {
	case in.reload <- syscall.SIGHUP:
	case <-ctx.Done():
		t.Fatalf("app did not take SIGHUP: %v", ctx.Err())
	}
}

func (in *instance) proxyURL(path string) string { return "http://" + in.addrs.Proxy + path }
func (in *instance) adminURL(path string) string { return "http://" + in.addrs.Admin + path }

// upstream is an app server. Requests to paths under /slow/ block until
// unblock is called (or the request or the test ends); others are answered
// at once. Every request's headers are sent on seen; arrived says when a
// slow request has reached the handler and cancelled when one ended
// because its request was cancelled.
type upstream struct {
	*httptest.Server
	seen      chan http.Header
	arrived   chan string
	cancelled chan string
	release   chan struct{}
	once      sync.Once
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{
		seen:      make(chan http.Header, 64),
		arrived:   make(chan string, 64),
		cancelled: make(chan string, 64),
		release:   make(chan struct{}),
	}
	testDone := t.Context()
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case u.seen <- r.Header.Clone():
		default:
		}
		if !strings.HasPrefix(r.URL.Path, "/slow/") {
			fmt.Fprintf(w, "fast %s", r.URL.Path)
			return
		}
		u.arrived <- r.URL.Path
		select {
		case <-u.release:
			fmt.Fprintf(w, "slow %s", r.URL.Path)
		case <-r.Context().Done():
			u.cancelled <- r.URL.Path
		case <-testDone.Done():
			http.Error(w, "test over", http.StatusInternalServerError)
		}
	}))
	// Cleanups run last first: the handlers are released before Close
	// waits for them.
	t.Cleanup(u.Close)
	t.Cleanup(u.unblock)
	return u
}

// unblock lets every slow request, present and future, complete.
func (u *upstream) unblock() { u.once.Do(func() { close(u.release) }) }

// newClient returns a client with a transport of its own, whose idle
// connections are closed when the test ends.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// result is a finished request.
type result struct {
	status int
	header http.Header
	body   string
	err    error
}

func do(ctx context.Context, c *http.Client, method, url, body string, header ...string) result {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return result{err: err}
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

// goGet starts a GET and returns where its result will arrive.
func goGet(ctx context.Context, c *http.Client, url string) <-chan result {
	ch := make(chan result, 1)
	go func() { ch <- do(ctx, c, http.MethodGet, url, "") }()
	return ch
}

// recv receives from ch, failing the test if ctx ends first.
func recv[T any](ctx context.Context, t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-ctx.Done():
		var zero T
		t.Fatalf("waiting for %s: %v", what, ctx.Err())
		return zero
	}
}

// status fetches the admin /status document.
func status(ctx context.Context, t *testing.T, c *http.Client, in *instance, header ...string) admin.Status {
	t.Helper()
	r := do(ctx, c, http.MethodGet, in.adminURL("/status"), "", header...)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET /status: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(r.body), &st); err != nil {
		t.Fatalf("GET /status: decoding %q: %v", r.body, err)
	}
	return st
}

// pollStatus polls /status until cond holds. Only for states nothing else
// signals, such as a request waiting in a queue.
func pollStatus(ctx context.Context, t *testing.T, c *http.Client, in *instance, what string, cond func(admin.Status) bool) admin.Status {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		st := status(ctx, t, c, in)
		if cond(st) {
			return st
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("waiting for %s in /status: %v; last: %+v", what, ctx.Err(), st)
		}
	}
}

// waitRefused dials addr until the connection is refused. Shutdown closes
// the listener right after it starts and nothing signals when, so this
// polls, bounded by ctx.
func waitRefused(ctx context.Context, t *testing.T, addr string) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("%s still accepts connections: %v", addr, ctx.Err())
			}
			return
		}
		c.Close()
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("%s still accepts connections after shutdown began: %v", addr, ctx.Err())
		}
	}
}

// notYet fails the test if ch already holds a value.
func notYet[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s: got %+v already, want it still pending", what, v)
	default:
	}
}
