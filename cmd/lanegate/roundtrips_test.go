package main

import (
	"bufio"
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/session/redistest"
)

// monitor records the commands clients send a Redis server (not those its
// scripts run) and counts them by what they touch, between marks.
type monitor struct {
	t     *testing.T
	lines chan string
	echo  *redis.Client
}

// newMonitor runs redis-cli's MONITOR on addr until the test ends.

func newMonitor(ctx context.Context, t *testing.T, addr string) *monitor {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Skipf("redis-cli not found: %v", err)
	}
	host, port, _ := strings.Cut(addr, ":")
	cmd := exec.CommandContext(ctx, cli, "-h", host, "-p", port, "monitor")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-cli monitor: %v", err)
	}
	m := &monitor{t: t, lines: make(chan string, 1<<16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			m.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-done
	})
	m.echo = redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { m.echo.Close() })
	// MONITOR is on once the server echoes a mark back through it; the
	// marks are sent until one is seen, since the first may precede it.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := m.echo.Echo(ctx, "lanegate-test-mark-start").Err(); err != nil {
			t.Fatalf("ECHO: %v", err)
		}
		select {
		case l := <-m.lines:
			if strings.Contains(l, "lanegate-test-mark-start") {
				return m
			}
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("redis-cli monitor never echoed a mark: %v", ctx.Err())
		}
	}
}

// until sends a mark and counts, by kind, the client commands seen before
// it: "line" (the fleet's login line), "lease" (renewals and member
// reads, which run on a timer whatever the traffic) and "other".
func (m *monitor) until(ctx context.Context, mark string) map[string]int {
	m.t.Helper()
	mark = "lanegate-test-mark-" + mark
	if err := m.echo.Echo(ctx, mark).Err(); err != nil {
		m.t.Fatalf("ECHO: %v", err)
	}
	n := map[string]int{}
	for {
		select {
		case l := <-m.lines:
			switch {
			case strings.Contains(l, mark):
				return n
			case strings.Contains(l, " lua]"), strings.Contains(l, "lanegate-test-mark-"):
				// Run by a script, or an earlier mark: no round trip.
			case strings.Contains(l, `:line"`) && strings.Contains(l, `"arrive"`):
				n["line"]++
				n["arrive"]++
			case strings.Contains(l, `:line"`):
				n["line"]++
				n["report"]++
			case strings.Contains(l, `:lease"`):
				n["lease"]++
			default:
				n["other"]++
			}
		case <-ctx.Done():
			m.t.Fatalf("waiting for the mark %q in MONITOR: %v", mark, ctx.Err())
			return nil
		}
	}
}

// The fleet's cost in Redis round trips per request, by lane, measured
// with MONITOR on a real Redis: none for a page (admission stays local
// under the lease), and for a login its one arrival plus its share of the
// batched reports; renewals run on their timer whatever the traffic.
func TestFleetRedisRoundTrips(t *testing.T) {
	ctx := testContext(t)
	srv := redistest.Start(t)
	up := newUpstream(t)
	in := start(ctx, t, append(append(environ(up.URL), fleetEnv(srv, "trips", "a")...), "LANEGATE_LOGIN_RATE=0"))
	c := newClient(t)
	pollStatus(ctx, t, c, in, "a fleet member with a share", func(st admin.Status) bool {
		return st.Fleet != nil && st.Fleet.State == "ok" && st.Fleet.Budget > 0
	})
	m := newMonitor(ctx, t, srv.Addr())

	const pages, logins = 200, 50
	m.until(ctx, "pages")
	for range pages {
		if r := do(ctx, c, http.MethodGet, in.proxyURL("/page"), ""); r.status != http.StatusOK {
			t.Fatalf("GET /page: %d %v", r.status, r.err)
		}
	}
	core := m.until(ctx, "logins")
	for range logins {
		if r := do(ctx, c, http.MethodPost, in.proxyURL("/accounts/login/"), "login=u"); r.status != http.StatusOK {
			t.Fatalf("POST /accounts/login/: %d %v", r.status, r.err)
		}
	}
	// The reports go out off the requests' path: wait until they have.
	pollStatus(ctx, t, c, in, "the logins' reports sent", func(admin.Status) bool {
		mb := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
		return strings.Contains(mb.body, `lanegate_fleet_line_total{result="reported"} 50`)
	})
	login := m.until(ctx, "end")

	perPage := float64(core["line"]+core["other"]) / pages
	perLogin := float64(login["line"]+login["other"]) / logins
	t.Logf("Redis round trips per request: core %.2f (%d in %d pages), login %.2f (%d arrivals, %d report batches, %d other in %d logins, one after another); renewals meanwhile: %d, %d",
		perPage, core["line"]+core["other"], pages, perLogin, login["arrive"], login["report"], login["other"], logins, core["lease"], login["lease"])
	if perPage != 0 {
		t.Errorf("pages cost %.2f Redis round trips each in a fleet, want none", perPage)
	}
	// One arrival each (the first script call may be sent twice: once
	// by hash, then with its body); reports are batched, so at most one
	// per login when logins come one after another.
	if a := login["arrive"]; a < logins || a > logins+1 {
		t.Errorf("%d arrival round trips for %d logins, want one each", a, logins)
	}
	if r := login["report"]; r > logins+1 {
		t.Errorf("%d report round trips for %d logins, want at most one each", r, logins)
	}
}
