package main

import (
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
)

// budgetOne admits one request at a time, so the next one queues.
var budgetOne = []string{
	"LANEGATE_BUDGET=1",
	"LANEGATE_CORE_RESERVED=1",
	"LANEGATE_CORE_MAX=1",
	"LANEGATE_LOGIN_RESERVED=0",
	"LANEGATE_LOGIN_MAX=1",
	"LANEGATE_EXPORT_MAX=1",
}

func TestServeProxies(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	in := start(ctx, t, environ(up.URL))
	c := newClient(t)

	r := do(ctx, c, http.MethodGet, in.proxyURL("/fast/page"), "")
	if r.err != nil || r.status != http.StatusOK || r.body != "fast /fast/page" {
		t.Fatalf("GET through the proxy: got %d %q, error %v; want 200 %q", r.status, r.body, r.err, "fast /fast/page")
	}
	h := recv(ctx, t, up.seen, "the upstream's request")
	if got := h.Get("X-Forwarded-Proto"); got != "http" {
		t.Errorf("upstream got X-Forwarded-Proto %q, want http", got)
	}
	if got := h.Get("X-Forwarded-For"); got != "127.0.0.1" {
		t.Errorf("upstream got X-Forwarded-For %q, want 127.0.0.1", got)
	}
	st := status(ctx, t, c, in)
	if st.Mode != "enforce" || st.Lanes["core"].Admitted != 1 {
		t.Errorf("/status: got mode %q, core admitted %d; want enforce, 1", st.Mode, st.Lanes["core"].Admitted)
	}
	if r := do(ctx, c, http.MethodGet, in.adminURL("/healthz"), ""); r.status != http.StatusOK {
		t.Errorf("GET admin /healthz: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	if r := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), ""); r.status != http.StatusOK || !strings.Contains(r.body, "go_goroutines") {
		t.Errorf("GET admin /metrics: got %d, error %v, want 200 with the Go collector's metrics:\n%s", r.status, r.err, r.body)
	}

	c.Transport.(*http.Transport).CloseIdleConnections()
	in.cancel()
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run after cancel: got %v, want nil", err)
	}
	if !strings.Contains(in.stderr.String(), `"stopped"`) {
		t.Errorf("log does not say it stopped:\n%s", in.stderr)
	}
}

func TestShutdownDrainsInFlight(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	in := start(ctx, t, environ(up.URL))
	c := newClient(t)

	slow := goGet(ctx, c, in.proxyURL("/slow/1"))
	recv(ctx, t, up.arrived, "the slow request at the upstream")

	mark := in.stderr.Len()
	in.cancel() // what SIGTERM does
	in.stderr.waitFor(ctx, t, mark, "shutting down")
	waitRefused(ctx, t, in.addrs.Proxy)
	notYet(t, slow, "the in-flight request before the upstream answers")
	notYet(t, in.exited, "run while a request is in flight")

	up.unblock()
	r := recv(ctx, t, slow, "the in-flight request")
	if r.err != nil || r.status != http.StatusOK || r.body != "slow /slow/1" {
		t.Errorf("in-flight request: got %d %q, error %v; want 200 %q", r.status, r.body, r.err, "slow /slow/1")
	}
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run: got %v, want nil", err)
	}
	if log := in.stderr.String(); strings.Contains(log, "drain timed out") {
		t.Errorf("log says the drain timed out, want a clean drain:\n%s", log)
	}
}

func TestShutdownAnswersQueued(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	in := start(ctx, t, environ(up.URL, budgetOne...))
	c := newClient(t)

	slow := goGet(ctx, c, in.proxyURL("/slow/1"))
	recv(ctx, t, up.arrived, "the slow request at the upstream")
	queued := goGet(ctx, c, in.proxyURL("/fast/queued"))
	pollStatus(ctx, t, c, in, "one queued core request", func(st admin.Status) bool {
		return st.Lanes["core"].Queued == 1
	})

	in.cancel()
	// The queued request is answered while the one in flight still holds
	// the only slot: shutdown does not keep it waiting for the drain.
	r := recv(ctx, t, queued, "the queued request's answer")
	notYet(t, slow, "the in-flight request")
	if r.err != nil || r.status != http.StatusServiceUnavailable {
		t.Fatalf("queued request at shutdown: got %d %q, error %v; want 503", r.status, r.body, r.err)
	}
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 {
		t.Errorf("queued request at shutdown: got Retry-After %q, want whole seconds >= 1", r.header.Get("Retry-After"))
	}
	if got := r.header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("queued request at shutdown: got Cache-Control %q, want no-store", got)
	}
	// The admin server stays up through the drain.
	st := status(ctx, t, c, in)
	if core := st.Lanes["core"]; core.Decisions["closed"] != 1 || core.Queued != 0 || core.InFlight != 1 {
		t.Errorf("/status during the drain: got core %+v, want 1 closed, 0 queued, 1 in flight", core)
	}
	waitRefused(ctx, t, in.addrs.Proxy)
	up.unblock()
	if r := recv(ctx, t, slow, "the in-flight request"); r.err != nil || r.status != http.StatusOK {
		t.Errorf("in-flight request: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run: got %v, want nil", err)
	}
	if n := len(up.seen); n != 1 {
		t.Errorf("upstream got %d requests, want only the one in flight (the queued one is never forwarded)", n)
	}
}

func TestShutdownTimeout(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	const timeout = 300 * time.Millisecond
	in := start(ctx, t, environ(up.URL, "LANEGATE_SHUTDOWN_TIMEOUT="+timeout.String()))
	c := newClient(t)

	stuck := goGet(ctx, c, in.proxyURL("/slow/stuck"))
	recv(ctx, t, up.arrived, "the stuck request at the upstream")

	begin := time.Now()
	in.cancel()
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run after a drain that timed out: got %v, want nil", err)
	}
	if took := time.Since(begin); took < timeout {
		t.Errorf("run returned after %v, want it to wait out the %v drain first", took, timeout)
	}
	r := recv(ctx, t, stuck, "the stuck request")
	if r.err == nil {
		t.Errorf("stuck request: got %d %q, want its connection closed", r.status, r.body)
	}
	// Closing the client's connection cancels the request to the upstream.
	if got := recv(ctx, t, up.cancelled, "the upstream request's cancellation"); got != "/slow/stuck" {
		t.Errorf("upstream request cancelled: got %q, want /slow/stuck", got)
	}
	if log := in.stderr.String(); !strings.Contains(log, "drain timed out") {
		t.Errorf("log does not say the drain timed out:\n%s", log)
	}
}

func TestStartupErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	t.Run("proxy address in use", func(t *testing.T) {
		_, stderr, err := runOnce(t, environ("http://127.0.0.1:1", "LANEGATE_LISTEN="+busy.Addr().String()))
		if err == nil || errors.Is(err, errReported) {
			t.Fatalf("got error %v, want one for main to print", err)
		}
		for _, s := range []string{"LANEGATE_LISTEN", busy.Addr().String()} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not mention %s; stderr:\n%s", err, s, stderr)
			}
		}
	})

	t.Run("admin address in use", func(t *testing.T) {
		// A free port for the proxy, which must be released again when
		// the admin listener fails.
		free, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		proxyAddr := free.Addr().String()
		free.Close()
		_, stderr, err := runOnce(t, environ("http://127.0.0.1:1",
			"LANEGATE_LISTEN="+proxyAddr, "LANEGATE_ADMIN_LISTEN="+busy.Addr().String()))
		if err == nil || errors.Is(err, errReported) {
			t.Fatalf("got error %v, want one for main to print", err)
		}
		if !strings.Contains(err.Error(), "LANEGATE_ADMIN_LISTEN") {
			t.Errorf("error %q does not mention LANEGATE_ADMIN_LISTEN; stderr:\n%s", err, stderr)
		}
		ln, err := net.Listen("tcp", proxyAddr)
		if err != nil {
			t.Errorf("proxy address %s after the failed start: %v, want it released", proxyAddr, err)
		} else {
			ln.Close()
		}
	})

	for _, tt := range []struct {
		name, variable string
		extra          []string
	}{
		{"unparsable budget", "LANEGATE_BUDGET", []string{"LANEGATE_BUDGET=abc"}},
		{"bad upstream", "LANEGATE_UPSTREAM", []string{"LANEGATE_UPSTREAM=ftp://127.0.0.1:21"}},
		{"key without certificate", "LANEGATE_TLS_CERT_FILE", []string{"LANEGATE_TLS_KEY_FILE=/nonexistent/key.pem"}},
		{"typo", "LANEGATE_BUDGT", []string{"LANEGATE_BUDGT=4"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := runOnce(t, environ("http://127.0.0.1:1", tt.extra...))
			if !errors.Is(err, errReported) {
				t.Errorf("got error %v, want errReported", err)
			}
			if !strings.Contains(stderr, "invalid configuration") || !strings.Contains(stderr, tt.variable) {
				t.Errorf("stderr does not report invalid configuration naming %s:\n%s", tt.variable, stderr)
			}
		})
	}
}
