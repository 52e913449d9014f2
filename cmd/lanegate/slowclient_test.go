package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/internal/nettest"
)

// slowBody is more than a connection absorbs when its client reads
// nothing: the client's receive buffer is pinned small (slowDial), and
// the kernel lets lanegate's send buffer grow to 4 MiB at most here
// (net.ipv4.tcp_wmem), as a phone on a bad network absorbs tens of KB.
const slowBody = 5 << 20

// bigUpstream answers /big with slowBody bytes and anything else with a
// short page.
func bigUpstream(t *testing.T) *httptest.Server {
	body := strings.Repeat("x", slowBody)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			io.WriteString(w, body)
			return
		}
		io.WriteString(w, "page")
	}))
	t.Cleanup(s.Close)
	return s
}

// slowDial connects to addr with a receive buffer of 8 KiB, which also
// stops the kernel from growing it.
func slowDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := nettest.DialNarrow(addr, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// slowReader asks for /big and then reads one byte a second until ctx
// ends: a client on a very bad network.
func slowReader(ctx context.Context, t *testing.T, addr string, wg *sync.WaitGroup) {
	c := slowDial(t, addr)
	fmt.Fprintf(c, "GET /big HTTP/1.1\r\nHost: lanegate.test\r\n\r\n")
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		b := make([]byte, 1)
		for {
			c.SetReadDeadline(time.Now().Add(testTimeout))
			if _, err := c.Read(b); err != nil && ctx.Err() == nil {
				t.Errorf("slow reader: %v, want its byte a second", err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// p95 of ds.
func p95(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)*95+99)/100-1]
}

// pages fetches n short pages one after another, each expected 200, and
// returns their latencies.
func pages(ctx context.Context, t *testing.T, c *http.Client, in *instance, n int) []time.Duration {
	t.Helper()
	var ds []time.Duration
	for i := range n {
		t0 := time.Now()
		r := do(ctx, c, http.MethodGet, in.proxyURL(fmt.Sprintf("/page/%d", i)), "")
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("page %d: got %d, %v; want 200", i, r.status, r.err)
		}
		ds = append(ds, time.Since(t0))
	}
	return ds
}

// Fifty clients that read a byte a second do not hold the budget of two:
// their responses are buffered, their slots freed while they still read,
// and ordinary pages keep being served without waiting for a slot. (The
// pages' latency beside the idle one is reported, not asserted: timing is
// measured by the benchmarks.)
func TestSlowReadersHoldNoSlot(t *testing.T) {
	ctx := testContext(t)
	up := bigUpstream(t)
	in := start(ctx, t, environ(up.URL,
		"LANEGATE_BUDGET=2", "LANEGATE_CORE_MAX=1", "LANEGATE_ACCESS_LOG=false",
		"LANEGATE_RESPONSE_BUFFER_BYTES=8388608", "LANEGATE_RESPONSE_BUFFER_TOTAL_BYTES=536870912",
		// They all arrive at once: room for them to wait their turn,
		// and time, on a machine busy enough that fifty 8 MB responses
		// one at a time take longer than the default 5 s.
		"LANEGATE_CORE_QUEUE=64", "LANEGATE_CORE_QUEUE_TIMEOUT=60s"))
	c := newClient(t)
	idle := pages(ctx, t, c, in, 40)

	readCtx, stopReading := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopReading()
	for range 50 {
		slowReader(readCtx, t, in.addrs.Proxy, &wg)
	}
	pollStatus(ctx, t, c, in, "all 50 slow responses admitted and their slots freed", func(st admin.Status) bool {
		return st.Lanes["core"].Admitted >= 50+40 && st.InFlight == 0
	})
	busy := pages(ctx, t, c, in, 40)
	st := status(ctx, t, c, in)
	if got := st.Lanes["core"].Shed; got != 0 {
		t.Errorf("core requests shed with 50 slow readers: got %d, want 0", got)
	}
	if st.InFlight != 0 {
		t.Errorf("in flight while the slow readers still read: got %d, want 0", st.InFlight)
	}
	t.Logf("page p95: idle %s, with 50 slow readers %s (%.2fx)", p95(idle), p95(busy), float64(p95(busy))/float64(p95(idle)))
}

// A response larger than the buffer holds its slot while relayed; a
// client that reads nothing of it is cut after the send timeout and the
// slot freed.
func TestSendTimeoutFreesSlot(t *testing.T) {
	ctx := testContext(t)
	up := bigUpstream(t)
	in := start(ctx, t, environ(up.URL,
		"LANEGATE_BUDGET=2", "LANEGATE_CORE_MAX=1", "LANEGATE_ACCESS_LOG=false",
		"LANEGATE_RESPONSE_BUFFER_BYTES=1048576", "LANEGATE_CLIENT_SEND_TIMEOUT=2s"))
	c := newClient(t)
	conn := slowDial(t, in.addrs.Proxy)
	t0 := time.Now()
	fmt.Fprintf(conn, "GET /big HTTP/1.1\r\nHost: lanegate.test\r\n\r\n")
	pollStatus(ctx, t, c, in, "the big response admitted", func(st admin.Status) bool {
		return st.Lanes["core"].Admitted == 1
	})
	pollStatus(ctx, t, c, in, "its slot freed", func(st admin.Status) bool { return st.InFlight == 0 })
	freed := time.Since(t0)
	if freed < 1500*time.Millisecond {
		t.Errorf("slot freed after %s, before the 2s send timeout could have cut a client that reads nothing", freed)
	}
	t.Logf("slot freed %s after the request (send timeout 2s)", freed)
	r := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
	if !strings.Contains(r.body, "lanegate_client_send_timeouts_total 1\n") {
		t.Errorf("/metrics: want lanegate_client_send_timeouts_total 1")
	}
	// What the client got is a response cut short, not a complete one.
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading what the cut client got: %v", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || n >= slowBody {
		t.Errorf("cut client: read %d of %d bytes, %v; want a response cut short", n, slowBody, err)
	}
}
