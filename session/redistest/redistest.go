// Package redistest runs private redis-server processes for tests, so that
// tests of the Redis session store never touch a shared Redis (a developer's
// or CI's instance on :6379) and can stop, restart and pause their own.
//
// Tests that use it skip when redis-server is not installed, unless the
// environment sets TEST_REQUIRE_REDIS=1 (as CI does), where a missing
// redis-server fails them instead of silently testing nothing.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanegate/lanegate/internal/nettest"
)

// RequireEnv names the environment variable that turns a missing
// redis-server from a skip into a failure.
const RequireEnv = "TEST_REQUIRE_REDIS"

// readyTimeout bounds how long a starting redis-server may take to answer
// PING. It starts in milliseconds; the margin is for loaded CI machines.
const readyTimeout = 10 * time.Second

// startAttempts is how often Start retries on a fresh port when the server
// exits at once, which happens when another process took the free port
// between our probe and the server's bind.
const startAttempts = 3

// Server is one private redis-server on 127.0.0.1. It is not safe for
// concurrent Stop and Restart; the tests that use it drive it from one
// goroutine.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	out  *nettest.SyncBuffer
	done chan struct{} // closed once cmd.Wait has returned
}

// Start starts an empty redis-server on a free 127.0.0.1 port and stops it
// when the test ends. It skips the test when redis-server is not installed
// (or fails it when RequireEnv is "1").
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("redistest: redis-server not found on PATH but %s=1: install Debian's redis-server (apt-get install redis-server)", RequireEnv)
		}
		t.Skip("redis-server not installed; install Debian's redis-server to run the Redis tests")
	}
	// TempDir first, so that its removal (cleanups run last-in first-out)
	// comes after the server is killed.
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(s.Stop)

	var lastErr error
	for range startAttempts {
		port, err := nettest.FreePort()
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		s.port = port
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("redistest: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is a redis:// URL of the server's database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Stop kills the server and waits for it to exit. Its port number is kept,
// so Restart brings a server back where clients expect it. Stopping a
// stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Restart stops the server if it runs and starts an empty one on the same
// port, returning once it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart on port %d: %v", s.port, err)
	}
}

// start runs redis-server on s.port and waits until it answers PING.
func (s *Server) start() error {
	cmd := exec.Command(s.bin,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", s.dir,
		"--loglevel", "warning",
	)
	out := &nettest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()

	if err := waitReady(s.Addr(), p.done); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("redis-server on %s: %w; its output:\n%s", s.Addr(), err, out.String())
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

// waitReady polls addr with PING until the server answers, the process
// exits (done closes), or readyTimeout passes.
func waitReady(addr string, done <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if lastErr = ping(addr); lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %w", readyTimeout, lastErr)
		}
		select {
		case <-done:
			return fmt.Errorf("exited before answering PING (last probe: %v)", lastErr)
		case <-tick.C:
		}
	}
}

// ping sends one inline PING and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}
