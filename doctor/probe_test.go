package doctor

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// leakDeadline ends a test server's connection that its client never
// finished nor closed; the probe closes every connection it opens long
// before, so reaching it means one was left open.
const leakDeadline = 20 * time.Second

// threadServer is an app server with a fixed number of worker threads, as
// gunicorn's sync and gthread workers are: a worker takes a connection,
// reads its request head to the end however long the client takes, then
// answers and closes it. Go's http.Server cannot stand in for it: it reads
// each head in a goroutine of its own, so an unfinished head holds nothing.
type threadServer struct {
	ln net.Listener
	// silent workers never answer, as an app too slow for the probe.
	silent bool
	wg     sync.WaitGroup
	// accepted counts the connections the workers took; left counts
	// those that reached leakDeadline.
	accepted, left atomic.Int32
}

// startThreadServer starts workers threads on a loopback port and
// returns the URL to probe. Its cleanup checks that no connection was
// left open.
func startThreadServer(t *testing.T, workers int, silent bool) (*threadServer, *url.URL) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &threadServer{ln: ln, silent: silent}
	for range workers {
		s.wg.Add(1)
		go s.work()
	}
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
		if n := s.left.Load(); n > 0 {
			t.Errorf("%d connections were left open by the probe", n)
		}
	})
	return s, &url.URL{Scheme: "http", Host: ln.Addr().String(), Path: "/accounts/login/"}
}

func (s *threadServer) work() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.serve(c)
	}
}

func (s *threadServer) serve(c net.Conn) {
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(leakDeadline)); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			s.ended(err)
			return
		}
		if line == "\r\n" {
			break
		}
	}
	if s.silent {
		// Hold the thread until the client gives up.
		_, err := io.Copy(io.Discard, r)
		s.ended(err)
		return
	}
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
}

// ended records how a client's connection ended: closed by the client
// (EOF or a reset) is right, the deadline means it was left open.
func (s *threadServer) ended(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.left.Add(1)
	}
}

// budgetEnv sizes lanegate to a budget of n.
func budgetEnv(n int) []string {
	return []string{"LANEGATE_DB_POOL_SIZE=" + strconv.Itoa(n), "LANEGATE_POOL_HEADROOM=0", "LANEGATE_UPSTREAM_CPUS=1"}
}

func TestThreadsProbe(t *testing.T) {
	tests := []struct {
		name    string
		workers int
		budget  int
		timeout time.Duration
		sev     Severity
		found   []string
		fix     []string
	}{
		// The OK cases return as soon as the answer comes; the timeout
		// only bounds a broken probe.
		{"one thread more than the budget", 5, 4, 10 * time.Second, OK,
			[]string{"answered one more request while 4 were held", "room for at least 5 at once, budget 4 + 1"}, nil},
		{"many threads", 16, 4, 10 * time.Second, OK, []string{"while 4 were held"}, nil},
		// The FAIL cases wait the whole timeout for an answer that
		// cannot come: every worker holds an unfinished head.
		{"as many threads as the budget", 4, 4, 300 * time.Millisecond, Fail,
			[]string{"with 4 requests held", "did not answer one more within 300ms", "fewer than 5 worker threads free"},
			[]string{"at least 5 threads", "--workers × --threads"}},
		{"one thread", 1, 4, 300 * time.Millisecond, Fail, []string{"fewer than 5 worker threads"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, u := startThreadServer(t, tt.workers, false)
			r := run1(t, Options{Config: load(t, budgetEnv(tt.budget)...), App: u, Timeout: tt.timeout})
			f := only(t, r, checkThreads)[0]
			want(t, f, tt.sev, append([]string{"http://" + u.Host + "/accounts/login/"}, tt.found...), tt.fix)
			if tt.sev == OK {
				// One request alone, the held ones, one more: nothing else.
				if got, want := srv.accepted.Load(), int32(tt.budget+2); got != want {
					t.Errorf("the server took %d connections, want %d", got, want)
				}
			}
		})
	}
}

func TestThreadsProbeNotMeasured(t *testing.T) {
	cfg := load(t, budgetEnv(2)...)

	t.Run("no app", func(t *testing.T) {
		want(t, only(t, run1(t, Options{Config: cfg}), checkThreads)[0], Warn,
			[]string{"unknown (give --app URL to measure)", "at least 3 worker threads"}, nil)
	})
	t.Run("https", func(t *testing.T) {
		u := &url.URL{Scheme: "https", Host: "127.0.0.1:1", User: url.UserPassword("u", "secret")}
		f := only(t, run1(t, Options{Config: cfg, App: u}), checkThreads)[0]
		want(t, f, Warn, []string{"not measured", "plain http only"}, []string{"http://"})
		if strings.Contains(f.Found, "secret") {
			t.Errorf("finding shows the URL's password: %s", f.Found)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		u := &url.URL{Scheme: "http", Host: addr, Path: "/"}
		want(t, only(t, run1(t, Options{Config: cfg, App: u}), checkThreads)[0], Fail,
			[]string{"did not answer one request", "refused"}, []string{"--app"})
	})
	t.Run("too slow for one request", func(t *testing.T) {
		_, u := startThreadServer(t, 8, true)
		want(t, only(t, run1(t, Options{Config: cfg, App: u, Timeout: 200 * time.Millisecond}), checkThreads)[0], Warn,
			[]string{"not measured", "took over 200ms to answer one request on its own"}, []string{"--timeout"})
	})
	t.Run("not HTTP", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.WriteString(c, "SSH-2.0-OpenSSH_9.2\r\n")
		}()
		u := &url.URL{Scheme: "http", Host: ln.Addr().String(), Path: "/"}
		want(t, only(t, run1(t, Options{Config: cfg, App: u}), checkThreads)[0], Fail,
			[]string{`"SSH-2.0-OpenSSH_9.2" is not HTTP`}, nil)
	})
}

// TestThreadsProbeGunicorn probes a real gunicorn, gthread workers, as the
// benchmark runs it: one worker of 2 threads is short of a budget of 4,
// one of 5 threads is not.
func TestThreadsProbeGunicorn(t *testing.T) {
	const gunicorn = "/usr/bin/gunicorn"
	for _, bin := range []string{gunicorn, "/usr/bin/python3"} {
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("TEST_REQUIRE_DJANGO") == "1" {
				t.Fatalf("%s: %v (TEST_REQUIRE_DJANGO=1)", bin, err)
			}
			t.Skipf("%s: %v: install Debian's gunicorn to run this test", bin, err)
		}
	}
	cfg := load(t, budgetEnv(4)...)
	for _, tt := range []struct {
		threads int
		sev     Severity
	}{{2, Fail}, {5, OK}} {
		t.Run(strconv.Itoa(tt.threads)+" threads", func(t *testing.T) {
			u := startGunicorn(t, gunicorn, tt.threads)
			f := only(t, run1(t, Options{Config: cfg, App: u, Timeout: 2 * time.Second}), checkThreads)[0]
			want(t, f, tt.sev, nil, nil)
		})
	}
}

// startGunicorn runs gunicorn with one gthread worker of the given
// threads, serving a WSGI app that answers "ok", and returns its URL.
func startGunicorn(t *testing.T, gunicorn string, threads int) *url.URL {
	t.Helper()
	dir := t.TempDir()
	app := "def app(environ, start_response):\n" +
		"    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', '2')])\n" +
		"    return [b'ok']\n"
	if err := os.WriteFile(filepath.Join(dir, "okapp.py"), []byte(app), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gunicorn, "--bind", "127.0.0.1:0", "--workers", "1", "--worker-class", "gthread",
		"--threads", strconv.Itoa(threads), "--chdir", dir, "--timeout", "30", "--graceful-timeout", "1", "okapp:app")
	// Its own process group, so that cleanup can end the worker too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-drained:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-drained
		}
		cmd.Wait()
	})

	// gunicorn logs the port it bound, then each worker it boots; a
	// connection made before the worker runs waits in the backlog.
	listening := regexp.MustCompile(`Listening at: (http://127\.0\.0\.1:\d+)`)
	lines := bufio.NewScanner(stderr)
	var log []string
	var base string
	for lines.Scan() {
		log = append(log, lines.Text())
		if m := listening.FindStringSubmatch(lines.Text()); m != nil {
			base = m[1]
		}
		if base != "" && regexp.MustCompile(`Booting worker`).MatchString(lines.Text()) {
			break
		}
	}
	go func() {
		defer close(drained)
		io.Copy(io.Discard, stderr)
	}()
	if base == "" {
		t.Fatalf("gunicorn did not say where it listens: %q", log)
	}
	u, err := url.Parse(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	return u
}
