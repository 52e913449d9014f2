package waitroom

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
)

func TestIsNavigation(t *testing.T) {
	for _, tc := range []struct {
		hdr  map[string]string
		want bool
	}{
		{map[string]string{"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, true},
		{map[string]string{"Sec-Fetch-Mode": "navigate"}, true},
		{map[string]string{"Accept": "text/html,*/*"}, true}, // a browser without Fetch Metadata
		{map[string]string{"Sec-Fetch-Mode": "cors", "Accept": "text/html"}, false},
		{map[string]string{"Accept": "application/json"}, false},
		{map[string]string{"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}, false},
		{map[string]string{"Accept": "*/*"}, false},
		{nil, false},
	} {
		r := httptest.NewRequest(http.MethodPost, "http://lanegate.test/accounts/login/", nil)
		for k, v := range tc.hdr {
			r.Header.Set(k, v)
		}
		if got := IsNavigation(r); got != tc.want {
			t.Errorf("IsNavigation(%v) = %v, want %v", tc.hdr, got, tc.want)
		}
	}
}

// fakeLine is a login line whose answers a test sets.
type fakeLine struct {
	congested bool
	wait      time.Duration
	keepErr   error
	kept      []string // clients Keep was called for
}

func (f *fakeLine) Line(uint64, time.Time) (int, time.Duration) { return 3, f.wait }
func (f *fakeLine) Keep(client string, id uint64, arrival, until time.Time) (admission.Place, error) {
	f.kept = append(f.kept, client)
	if f.keepErr != nil {
		return admission.Place{}, f.keepErr
	}
	if id == 0 {
		id, arrival = 7, until.Add(-time.Minute)
	}
	return admission.Place{ID: id, Arrival: arrival, Until: until, Position: 3, Wait: f.wait}, nil
}
func (f *fakeLine) LoginCongested() bool     { return f.congested }
func (f *fakeLine) LoginHold() time.Duration { return 4 * time.Second }

func newTestRoom(t *testing.T, line Line) (*Room, *clockwork.FakeClock) {
	t.Helper()
	kr, err := session.ParseKeyring("test:waitroom-test-ticket-secret-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	clock := clockwork.NewFakeClockAt(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	return New(line, kr, func(*http.Request) bool { return false }, WithClock(clock)), clock
}

func navRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://lanegate.test/accounts/login/", nil)
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	return r
}

// A person who needs a new place while the buckets have no token gets a
// page that says the line is full and tries again, and no ticket: a place
// is paid for when it is made.
func TestGatePageLineFull(t *testing.T) {
	line := &fakeLine{congested: true, wait: time.Minute,
		keepErr: &admission.ShedError{Lane: admission.Login, Err: admission.ErrRateLimited, RetryAfter: 2500 * time.Millisecond}}
	rm, _ := newTestRoom(t, line)
	w := httptest.NewRecorder()
	if !rm.GatePage(w, navRequest(), "192.0.2.7") {
		t.Fatal("GatePage let the person through to the form")
	}
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "3" || w.Header().Get("Lanegate-Waiting") != "1" {
		t.Fatalf("status %d, headers %v: want 429, Retry-After 3, Lanegate-Waiting", w.Code, w.Header())
	}
	if w.Header().Get(TicketHeader) != "" || w.Header().Get("Set-Cookie") != "" {
		t.Fatalf("line-full page handed out a ticket: %v", w.Header())
	}
	if !strings.Contains(w.Body.String(), `<meta http-equiv="refresh" content="3">`) {
		t.Errorf("line-full page does not try again by itself:\n%s", w.Body)
	}
	if len(line.kept) != 1 || line.kept[0] != "192.0.2.7" {
		t.Errorf("Keep called for %v, want the client's key", line.kept)
	}

	// With a token, the waiting page and a ticket signed at the room's clock.
	line.keepErr = nil
	w = httptest.NewRecorder()
	if !rm.GatePage(w, navRequest(), "192.0.2.7") || w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d: want the waiting page", w.Code)
	}
	tk, ok := rm.Ticket(withTicket(navRequest(), w.Header().Get(TicketHeader)), rm.clock.Now())
	if !ok || tk.ID != 7 {
		t.Fatalf("the waiting page's ticket reads back as %+v, %v", tk, ok)
	}
}

func withTicket(r *http.Request, tok string) *http.Request {
	r.Header.Set(TicketHeader, tok)
	return r
}
