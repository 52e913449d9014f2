package main

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
)

// TestBufferBodyTotal fills LANEGATE_BUFFER_BODY_TOTAL_BYTES with one
// small body still arriving: the next small body finds no room and
// streams, taking a slot while it arrives, instead of being refused or
// buffered past the bound. Both reach the upstream whole, and the memory
// is given back.
func TestBufferBodyTotal(t *testing.T) {
	ctx := testContext(t)
	up := newRecorder(t)
	in := start(ctx, t, append(environ(up.URL, budgetOne...),
		"LANEGATE_BUFFER_BODY_TOTAL_BYTES=512")) // one start buffer
	c := newClient(t)
	buffered := func(want string) {
		t.Helper()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			m := do(ctx, c, http.MethodGet, in.adminURL("/metrics"), "")
			if strings.Contains(m.body, "\nlanegate_buffered_body_bytes "+want+"\n") {
				return
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("lanegate_buffered_body_bytes never became %s: %v", want, ctx.Err())
			}
		}
	}
	body := strings.Repeat("x", 1000)
	head := func(path string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: lanegate.test\r\nContent-Length: 1000\r\n\r\n"
	}

	first := dialProxy(ctx, t, in, testTimeout)
	write(t, first, head("/fast/first")+body[:10])
	buffered("512")

	second := dialProxy(ctx, t, in, testTimeout)
	write(t, second, head("/fast/second")+body[:10])
	s := recv(ctx, t, up.arrived, "the second body, streaming, at the upstream")
	if s.path != "/fast/second" {
		t.Fatalf("upstream got %s first, want /fast/second streaming while /fast/first is buffered", s.path)
	}
	if st := status(ctx, t, c, in); st.InFlight != 1 {
		t.Errorf("/status while the second body streams: %d in flight, want its 1", st.InFlight)
	}
	write(t, second, body[10:])
	if r := readResponse(t, bufio.NewReader(second), http.MethodPost); r == nil || r.status != http.StatusOK || r.body != "seen POST /fast/second 1000" {
		t.Errorf("streamed body: got %+v, want 200 and the whole body seen", r)
	}

	write(t, first, body[10:])
	if r := readResponse(t, bufio.NewReader(first), http.MethodPost); r == nil || r.status != http.StatusOK || r.body != "seen POST /fast/first 1000" {
		t.Errorf("buffered body: got %+v, want 200 and the whole body seen", r)
	}
	buffered("0")
	pollStatus(ctx, t, c, in, "the slot released", func(st admin.Status) bool { return st.InFlight == 0 })
}
