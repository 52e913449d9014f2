package proxy

// End-to-end tests of the login waiting room (room.go, admission's room.go):
// a fake login app whose POSTs the test releases one at a time sits behind a
// real Handler with the waiting room on. Every name here starts with "room"
// (helpers) or "TestRoom" (tests) so that other test files cannot clash.
//
// Determinism. The controller runs on the real clock, because the handler
// stamps each completion with its own time.Now (forward's ReleaseAt): a
// fake controller clock would disagree with those stamps and the measured
// rate would be garbage. The rate is instead pinned by roomSetRate, which
// records rateWindow login completions at chosen instants through the
// controller's own API (a passed login permit released with ReleaseAt), so
// every expected wait is position × every, give or take the few
// milliseconds a test step takes. Thresholds are chosen with a margin of a
// third or more on each side. Holds are real: a request that must be
// admitted before its hold ends is released within milliseconds, and the
// only test that waits a whole hold (the browser's 307) waits 2 s.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/waitroom"
)

const (
	roomLoginPath = "/accounts/login/"
	roomKeyID     = "room"
	roomSecret    = "lanegate-room-test-ticket-secret-0123456789"
	// roomOtherSecret signs forged tickets under the same key id.
	roomOtherSecret = "somebody-elses-ticket-secret-9876543210xyz"
	// roomWho names a test request; the fake app records it.
	roomWho = "X-Room-Who"
	// roomRateWindow is admission's rateWindow: how many completions the
	// rate is measured over. roomSetRate fills all of them.
	roomRateWindow = 16
)

// roomFormHTML is the login form the fake app serves.
const roomFormHTML = `<!doctype html><html><head><title>Sign in</title></head><body>
<form method="post" action="/accounts/login/" id="login-form">
<input name="login" id="id_login"><input name="password" id="id_password" type="password">
<button type="submit" id="submit">Sign in</button></form></body></html>
`

// Headers of a script (an API client) and of a person's browser.
var (
	roomScript = map[string]string{"Accept": "application/json"}
	roomNav    = map[string]string{
		"Accept":         "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
		"Sec-Fetch-Mode": "navigate",
		"Sec-Fetch-Dest": "document",
	}
)

// roomLimits: one login at a time, held up to hold; room elsewhere.
func roomLimits(hold time.Duration) admission.Limits {
	var l admission.Limits
	l.Budget = 8
	l.Lane[admission.Core] = admission.LaneLimits{Reserved: 1, Max: 4, Queue: 16, QueueTimeout: testTimeout}
	l.Lane[admission.Login] = admission.LaneLimits{Reserved: 1, Max: 1, Queue: 16, QueueTimeout: hold}
	l.Lane[admission.Export] = admission.LaneLimits{Max: 1, Queue: 1, QueueTimeout: time.Second}
	return l
}

// roomHit is what the fake app saw of one request.
type roomHit struct {
	Who, Method, URI, Body string
	Header                 http.Header
}

// roomApp is a fake login app. GET of the login page serves the form; a
// POST to it is reported on arrived and, when hold is set, answered only
// once the test sends on release (one send, one login), so the test decides
// when each login completes and sees the order they reached the app in.
type roomApp struct {
	hold    bool
	arrived chan roomHit
	release chan struct{}
	done    chan struct{}
	once    sync.Once

	mu   sync.Mutex
	hits []roomHit
}

func roomNewApp(hold bool) *roomApp {
	return &roomApp{hold: hold, arrived: make(chan roomHit, 256), release: make(chan struct{}), done: make(chan struct{})}
}

// Close lets every held login go; idempotent.
func (a *roomApp) Close() { a.once.Do(func() { close(a.done) }) }

func (a *roomApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	who := r.Header.Get(roomWho)
	if who == "" {
		if f, err := url.ParseQuery(string(body)); err == nil {
			who = f.Get("login")
		}
	}
	hit := roomHit{Who: who, Method: r.Method, URI: r.RequestURI, Body: string(body), Header: r.Header.Clone()}
	a.mu.Lock()
	a.hits = append(a.hits, hit)
	a.mu.Unlock()
	switch {
	case r.URL.Path == roomLoginPath && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, roomFormHTML)
	case r.URL.Path == roomLoginPath:
		if a.hold {
			a.arrived <- hit
			select {
			case <-a.release:
			case <-a.done:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true,"user":`+strconv.Quote(who)+`}`)
	default:
		io.WriteString(w, "ok")
	}
}

// Posts returns the login POSTs the app received from who.
func (a *roomApp) Posts(who string) []roomHit {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []roomHit
	for _, h := range a.hits {
		if h.Method == http.MethodPost && h.Who == who {
			out = append(out, h)
		}
	}
	return out
}

// roomNext returns the next login to reach the app.
func roomNext(t testing.TB, a *roomApp) roomHit {
	t.Helper()
	select {
	case h := <-a.arrived:
		return h
	case <-time.After(testTimeout):
		t.Fatalf("no login reached the app within %s", testTimeout)
		return roomHit{}
	}
}

// roomRelease completes the login the app holds.
func roomRelease(t testing.TB, a *roomApp) {
	t.Helper()
	select {
	case a.release <- struct{}{}:
	case <-time.After(testTimeout):
		t.Fatalf("no login held by the app to release within %s", testTimeout)
	}
}

// roomStack is the fake app behind a Handler with the waiting room on.
type roomStack struct {
	*testProxy
	App   *roomApp
	Keys  *session.Keyring
	Admin *httptest.Server
	Hold  time.Duration
}

func roomKeyring(t testing.TB, secret string) *session.Keyring {
	t.Helper()
	kr, err := session.ParseKeyring(roomKeyID + ":" + secret)
	if err != nil {
		t.Fatalf("ParseKeyring: %v", err)
	}
	return kr
}

// roomNewStack builds the stack; holdLogins makes the app hold each login
// POST until roomRelease.
func roomNewStack(t *testing.T, hold time.Duration, holdLogins bool) *roomStack {
	t.Helper()
	return roomNewStackWith(t, roomLimits(hold), holdLogins, Options{})
}

// roomNewStackWith is roomNewStack under limits and with opts (the
// waiting room is turned on in them); the hold is the login lane's queue
// timeout.
func roomNewStackWith(t *testing.T, limits admission.Limits, holdLogins bool, opts Options) *roomStack {
	t.Helper()
	app := roomNewApp(holdLogins)
	up := testUpstream(t, app)
	keys := roomKeyring(t, roomSecret)
	opts.WaitingRoom, opts.Tickets = true, keys
	p := testNewProxy(t, up.URL, limits, opts)
	// Registered last, so it runs first: held logins end before the
	// servers wait for their requests.
	t.Cleanup(app.Close)
	hold := limits.Lane[admission.Login].QueueTimeout
	return &roomStack{testProxy: p, App: app, Keys: keys, Admin: testNewAdmin(t, p, ""), Hold: hold}
}

// roomSetRate makes the measured login completion rate one per every: it
// records a window of login completions every apart, the last one now. The
// completions go through the controller's API, as the handler's do: a login
// permit (taken with Pass, which never waits, so it works while the lane is
// full) released at a chosen instant.
func roomSetRate(ctrl *admission.Controller, every time.Duration) {
	roomSetRateAt(ctrl, every, time.Now())
}

// roomSetRateAt is roomSetRate with the last completion at last.
func roomSetRateAt(ctrl *admission.Controller, every time.Duration, last time.Time) {
	for i := roomRateWindow - 1; i >= 0; i-- {
		ctrl.Pass(admission.Request{Lane: admission.Login}).ReleaseAt(last.Add(-time.Duration(i) * every))
	}
}

// roomWaitQueued waits until n logins wait in line.
func roomWaitQueued(t testing.TB, ctrl *admission.Controller, n int) {
	t.Helper()
	testWaitFor(t, strconv.Itoa(n)+" logins queued", func() bool { return testLane(ctrl, admission.Login).Queued == n })
}

// roomLine is the controller's count of logins in line, present or away.
func roomLine(ctrl *admission.Controller) int {
	r := ctrl.Snapshot().Room
	return r.Waiting + r.Away
}

// roomHeaders merges header maps; later ones win.
func roomHeaders(hs ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, h := range hs {
		for k, v := range h {
			out[k] = v
		}
	}
	return out
}

// roomPassword is who's password in the posted form.
func roomPassword(who string) string { return "pw-" + who + "-Tr0ub4dor&3" }

// roomPost builds who's login POST to uri (the login path, maybe with a
// query) with the extra headers.
func roomPost(t testing.TB, s *roomStack, who, uri string, hdr ...map[string]string) *http.Request {
	t.Helper()
	form := url.Values{"login": {who}, "password": {roomPassword(who)}}.Encode()
	h := roomHeaders(append([]map[string]string{{"Content-Type": "application/x-www-form-urlencoded", roomWho: who}}, hdr...)...)
	return testRequest(t, http.MethodPost, s.Server.URL+uri, h, strings.NewReader(form))
}

// roomByHeader and roomByCookie carry a ticket back.
func roomByHeader(tok string) map[string]string { return map[string]string{waitroom.TicketHeader: tok} }
func roomByCookie(tok string) map[string]string {
	return map[string]string{"Cookie": waitroom.TicketCookie + "=" + tok}
}

// roomTicketCookie returns the response's lanegate_ticket cookie, or nil.
func roomTicketCookie(resp *http.Response) *http.Cookie {
	var c *http.Cookie
	for _, k := range resp.Cookies() {
		if k.Name == waitroom.TicketCookie {
			c = k
		}
	}
	return c
}

// roomClaims verifies a ticket the handler issued.
func roomClaims(t testing.TB, s *roomStack, tok string) *session.Claims {
	t.Helper()
	c, err := s.Keys.Verify(tok, session.TypeTicket, time.Now(), session.Window{MaxAge: time.Hour, Skew: 5 * time.Second})
	if err != nil {
		t.Fatalf("ticket %q does not verify: %v", tok, err)
	}
	if c.Lane != "login" || c.TicketID == "" || c.Arrival <= 0 || c.Expires <= time.Now().Unix() {
		t.Fatalf("ticket claims %+v: want lane login, an id, an arrival and a future expiry", c)
	}
	return c
}

// roomWantTicket checks that res carries a fresh ticket in both the header
// and the cookie, and returns its claims and token.
func roomWantTicket(t testing.TB, s *roomStack, res testResult) (*session.Claims, string) {
	t.Helper()
	tok := res.Resp.Header.Get(waitroom.TicketHeader)
	if tok == "" {
		t.Fatalf("no %s header in a %d answer (headers %v)", waitroom.TicketHeader, res.Resp.StatusCode, res.Resp.Header)
	}
	c := roomTicketCookie(res.Resp)
	if c == nil || c.Value != tok {
		t.Fatalf("ticket cookie %+v: want %s with the header's token", c, waitroom.TicketCookie)
	}
	if !c.HttpOnly || c.Path != "/" || c.SameSite != http.SameSiteLaxMode || c.MaxAge <= 0 || c.Secure {
		t.Errorf("ticket cookie %q: want HttpOnly, Path=/, SameSite=Lax, a positive Max-Age, not Secure over plain HTTP", c.Raw)
	}
	return roomClaims(t, s, tok), tok
}

// roomShed is a script's 503 answer with its place.
type roomShed struct {
	Reason     string
	Place      int
	Wait       int // wait_seconds
	RetryAfter int
	Ticket     string
	Claims     *session.Claims
}

// roomWantShed checks a script's shed login answer: 503, JSON with place,
// wait and retry_after, Retry-After agreeing, no-store, and a ticket.
func roomWantShed(t testing.TB, s *roomStack, res testResult) roomShed {
	t.Helper()
	testStatus(t, res, http.StatusServiceUnavailable)
	if ct := res.Resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json (body %q)", ct, res.Body)
	}
	var doc struct {
		Error      string `json:"error"`
		Reason     string `json:"reason"`
		Lane       string `json:"lane"`
		RetryAfter int    `json:"retry_after"`
		Place      int    `json:"place"`
		Wait       int    `json:"wait_seconds"`
	}
	if err := json.Unmarshal(res.Body, &doc); err != nil {
		t.Fatalf("body %q: %v", res.Body, err)
	}
	if doc.Error != "overloaded" || doc.Lane != "login" || doc.Place < 1 || doc.RetryAfter < 1 {
		t.Fatalf("body %q: want error overloaded, lane login, a place and retry_after", res.Body)
	}
	ra, err := strconv.Atoi(res.Resp.Header.Get("Retry-After"))
	if err != nil || ra != doc.RetryAfter {
		t.Fatalf("Retry-After %q, want the body's retry_after %d", res.Resp.Header.Get("Retry-After"), doc.RetryAfter)
	}
	if cc := res.Resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	c, tok := roomWantTicket(t, s, res)
	return roomShed{Reason: doc.Reason, Place: doc.Place, Wait: doc.Wait, RetryAfter: ra, Ticket: tok, Claims: c}
}

// roomWantAdmitted checks a login the app answered, after which the ticket
// cookie, if one was used, is deleted.
func roomWantAdmitted(t testing.TB, res testResult, ticketed bool) {
	t.Helper()
	testStatus(t, res, http.StatusOK)
	c := roomTicketCookie(res.Resp)
	switch {
	case ticketed && (c == nil || c.MaxAge >= 0):
		t.Errorf("admitted ticketed login: ticket cookie %+v, want it deleted (Max-Age<0)", c)
	case !ticketed && c != nil:
		t.Errorf("admitted login without a ticket got ticket cookie %q", c.Raw)
	}
	if res.Resp.Header.Get(waitroom.TicketHeader) != "" {
		t.Errorf("admitted login got a %s header", waitroom.TicketHeader)
	}
}

// roomWantAbout fails unless got is within slack of want.
func roomWantAbout(t testing.TB, what string, got, want, slack float64) {
	t.Helper()
	if got < want-slack || got > want+slack {
		t.Errorf("%s = %v, want %v ± %v", what, got, want, slack)
	}
}

// roomStatus reads the waiting room section of /status.
func roomStatus(t testing.TB, s *roomStack) waitroom.Status {
	t.Helper()
	res := testFetch(t, s.Admin.Client(), http.MethodGet, s.Admin.URL+"/status", nil, nil)
	testStatus(t, res, http.StatusOK)
	var st admin.Status
	if err := json.Unmarshal(res.Body, &st); err != nil {
		t.Fatalf("status %q: %v", res.Body, err)
	}
	if st.WaitingRoom == nil {
		t.Fatalf("status has no waiting_room: %s", res.Body)
	}
	return *st.WaitingRoom
}

// roomMetrics scrapes /metrics.
func roomMetrics(t testing.TB, s *roomStack) map[string]float64 {
	t.Helper()
	return testMetrics(t, s.Admin.Client(), s.Admin.URL+"/metrics", nil)
}

// roomTicketsMetric is one lanegate_waiting_room_tickets_total series.
func roomTicketsMetric(m map[string]float64, result string) float64 {
	return m[`lanegate_waiting_room_tickets_total{result="`+result+`"}`]
}

// roomWantTickets compares the ticket counters of /metrics and /status
// with want; results not named must be 0.
func roomWantTickets(t testing.TB, s *roomStack, want map[string]uint64) {
	t.Helper()
	m := roomMetrics(t, s)
	st := roomStatus(t, s)
	for _, result := range []string{"issued", "redeemed", "accepted", "reused", "forged", "expired", "wrong_lane"} {
		key := `lanegate_waiting_room_tickets_total{result="` + result + `"}`
		if _, ok := m[key]; !ok {
			t.Errorf("metrics lack %s", key)
		}
		if got := roomTicketsMetric(m, result); got != float64(want[result]) {
			t.Errorf("metric tickets{result=%q} = %v, want %d", result, got, want[result])
		}
		if got := st.Tickets[result]; got != want[result] {
			t.Errorf("status tickets[%q] = %d, want %d", result, got, want[result])
		}
	}
}

// roomPage is a waiting page as served.
type roomPage struct {
	Place   int
	Wait    string
	Refresh int
	Ticket  string
	Claims  *session.Claims
}

var (
	roomPlaceRE   = regexp.MustCompile(`id="lanegate-place">(\d+)<`)
	roomWaitRE    = regexp.MustCompile(`id="lanegate-wait">([^<]+)<`)
	roomRefreshRE = regexp.MustCompile(`<meta http-equiv="refresh" content="(\d+)">`)
)

// roomWantPage checks that res is the waiting page and reads it.
func roomWantPage(t testing.TB, s *roomStack, res testResult) roomPage {
	t.Helper()
	testStatus(t, res, http.StatusServiceUnavailable)
	h := res.Resp.Header
	if h.Get("Lanegate-Waiting") != "1" || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || h.Get("Cache-Control") != "no-store" {
		t.Fatalf("waiting page headers %v: want Lanegate-Waiting: 1, text/html, no-store", h)
	}
	body := string(res.Body)
	pm, wm, rm := roomPlaceRE.FindStringSubmatch(body), roomWaitRE.FindStringSubmatch(body), roomRefreshRE.FindStringSubmatch(body)
	if pm == nil || wm == nil || rm == nil {
		t.Fatalf("waiting page without place, wait or refresh:\n%s", body)
	}
	p := roomPage{Wait: wm[1]}
	p.Place, _ = strconv.Atoi(pm[1])
	p.Refresh, _ = strconv.Atoi(rm[1])
	ra, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || ra < 1 {
		t.Errorf("waiting page Retry-After %q, want whole seconds ≥ 1", h.Get("Retry-After"))
	}
	if p.Refresh < 2 || p.Refresh > 10 || p.Refresh != min(max(ra, 2), 10) {
		t.Errorf("waiting page refreshes in %d s with Retry-After %d: want Retry-After clamped to 2..10", p.Refresh, ra)
	}
	p.Claims, p.Ticket = roomWantTicket(t, s, res)
	return p
}

// roomWantForm checks that the app's login form was served.
func roomWantForm(t testing.TB, res testResult) {
	t.Helper()
	testStatus(t, res, http.StatusOK)
	if !strings.Contains(string(res.Body), `id="login-form"`) || res.Resp.Header.Get("Lanegate-Waiting") != "" {
		t.Fatalf("want the app's login form, got headers %v body %q", res.Resp.Header, res.Body)
	}
}

// roomGetPage opens the login page with the extra headers.
func roomGetPage(t testing.TB, s *roomStack, hdr ...map[string]string) testResult {
	t.Helper()
	return testFetch(t, s.Client, http.MethodGet, s.Server.URL+roomLoginPath, roomHeaders(hdr...), nil)
}

// roomBusy puts one login in flight at the app (A) and one in line behind
// it (B), and returns their pending results.
func roomBusy(t testing.TB, s *roomStack) (a, b <-chan testResult) {
	t.Helper()
	a = testGo(s.Client, roomPost(t, s, "A", roomLoginPath, roomScript))
	if h := roomNext(t, s.App); h.Who != "A" {
		t.Fatalf("first login at the app: %q, want A", h.Who)
	}
	b = testGo(s.Client, roomPost(t, s, "B", roomLoginPath, roomScript))
	roomWaitQueued(t, s.Ctrl, 1)
	return a, b
}

// Logins are served in order of first arrival across retries: the ones
// sent away with a ticket come back, in any order and after a later
// arrival already waits, and still go before it.
func TestRoomFirstArrivalOrderAcrossRetries(t *testing.T) {
	const hold, every = 3 * time.Second, 2 * time.Second
	s := roomNewStack(t, hold, true)
	// One login per 2 s: the first in line waits 2 s (held), the second 4 s
	// and later ones more, beyond the 3 s hold (sent away with a place).
	roomSetRate(s.Ctrl, every)
	a, b := roomBusy(t, s)

	shed := map[string]roomShed{}
	for i, who := range []string{"C", "D", "E"} {
		res := testDo(s.Client, roomPost(t, s, who, roomLoginPath, roomScript))
		if res.Err != nil {
			t.Fatalf("%s: %v", who, res.Err)
		}
		sh := roomWantShed(t, s, res)
		place := i + 2 // behind B
		wait := time.Duration(place) * every
		if sh.Reason != "wait_too_long" || sh.Place != place || sh.Wait != int(wait.Seconds()) {
			t.Fatalf("%s: shed %+v, want wait_too_long at place %d, wait %s", who, sh, place, wait)
		}
		if want := waitroom.RetryAfter(wait, hold); sh.RetryAfter < want-1 || sh.RetryAfter > want+1 {
			t.Errorf("%s: Retry-After %d, want about %d (a little before its turn)", who, sh.RetryAfter, want)
		}
		shed[who] = sh
	}
	if !(shed["C"].Claims.Arrival < shed["D"].Claims.Arrival && shed["D"].Claims.Arrival < shed["E"].Claims.Arrival) {
		t.Fatalf("ticket arrivals not in arrival order: C %d D %d E %d", shed["C"].Claims.Arrival, shed["D"].Claims.Arrival, shed["E"].Claims.Arrival)
	}
	if st := s.Ctrl.Snapshot().Room; st.Waiting != 1 || st.Away != 3 {
		t.Fatalf("room %+v, want B waiting and C, D, E away", st)
	}

	// The app speeds up (one login per 250 ms): F, a new arrival, now
	// fits the hold and waits in line, behind the three places kept.
	roomSetRate(s.Ctrl, 250*time.Millisecond)
	f := testGo(s.Client, roomPost(t, s, "F", roomLoginPath, roomScript))
	roomWaitQueued(t, s.Ctrl, 2)

	// The ticket holders come back after F, last first; D and C carry
	// the ticket as a cookie, E in the header.
	e := testGo(s.Client, roomPost(t, s, "E", roomLoginPath, roomScript, roomByHeader(shed["E"].Ticket)))
	roomWaitQueued(t, s.Ctrl, 3)
	d := testGo(s.Client, roomPost(t, s, "D", roomLoginPath, roomScript, roomByCookie(shed["D"].Ticket)))
	roomWaitQueued(t, s.Ctrl, 4)
	c := testGo(s.Client, roomPost(t, s, "C", roomLoginPath, roomScript, roomByCookie(shed["C"].Ticket)))
	roomWaitQueued(t, s.Ctrl, 5)

	order := []string{"A"}
	for range 5 {
		roomRelease(t, s.App)
		order = append(order, roomNext(t, s.App).Who)
	}
	roomRelease(t, s.App)
	if got, want := strings.Join(order, " "), "A B C D E F"; got != want {
		t.Fatalf("the app served %q, want %q: first arrival, not retry order", got, want)
	}
	roomWantAdmitted(t, testReceive(t, a), false)
	roomWantAdmitted(t, testReceive(t, b), false)
	roomWantAdmitted(t, testReceive(t, f), false)
	for _, ch := range []<-chan testResult{c, d, e} {
		roomWantAdmitted(t, testReceive(t, ch), true)
	}
	testWaitIdle(t, s.Ctrl)
	if st := s.Ctrl.Snapshot().Room; st.Waiting != 0 || st.Away != 0 || st.Issued != 3 || st.Redeemed != 3 || st.Rejected != 0 {
		t.Fatalf("room %+v, want 3 issued, 3 redeemed, nobody left", st)
	}
	roomWantTickets(t, s, map[string]uint64{"issued": 3, "redeemed": 3, "accepted": 3})
}

// roomSign signs c with keys, as a ticket unless c says otherwise.
func roomSign(keys *session.Keyring, c session.Claims) string {
	if c.Type == "" {
		c.Type = session.TypeTicket
	}
	return keys.Sign(&c)
}

// A good ticket keeps its place; every ticket that is not one (forged,
// expired, for another lane, shown twice at once, used already) is counted
// and its holder joins at the back of the line with a new place.
func TestRoomTicketsKeepPlacesBadOnesGoToTheBack(t *testing.T) {
	const hold, every = 3 * time.Second, 2 * time.Second
	s := roomNewStack(t, hold, true)
	roomSetRate(s.Ctrl, every)
	a, b := roomBusy(t, s)

	res := testDo(s.Client, roomPost(t, s, "C", roomLoginPath, roomScript))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	c := roomWantShed(t, s, res)
	if c.Place != 2 {
		t.Fatalf("C: place %d, want 2", c.Place)
	}
	ids := map[string]bool{c.Claims.TicketID: true}

	// C comes back too early: still beyond the hold, so sent away again,
	// but in the same place under the same ticket id and first arrival.
	res = testDo(s.Client, roomPost(t, s, "C", roomLoginPath, roomScript, roomByHeader(c.Ticket)))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	again := roomWantShed(t, s, res)
	if again.Place != 2 || again.Claims.TicketID != c.Claims.TicketID || again.Claims.Arrival != c.Claims.Arrival {
		t.Fatalf("C back early: place %d ticket %+v, want place 2 under ticket %+v", again.Place, again.Claims, c.Claims)
	}

	now := time.Now()
	early := c.Claims.Arrival - int64(time.Second) // ahead of everyone, if believed
	good := session.Claims{Lane: "login", Arrival: early, TicketID: "123abc", Expires: now.Add(time.Minute).Unix(), IssuedAt: now.Unix()}
	with := func(f func(*session.Claims)) session.Claims { c := good; f(&c); return c }
	other := roomKeyring(t, roomOtherSecret)
	bad := []struct {
		name, token string
		cookie      bool
	}{
		{"forged: another secret, same key id", roomSign(other, good), false},
		{"forged: another secret, in the cookie", roomSign(other, with(func(c *session.Claims) { c.TicketID = "456def" })), true},
		{"forged: garbage", "v1.room.bm90LWEtdGlja2V0.c2ln", false},
		{"forged: an identity token, not a ticket", roomSign(s.Keys, with(func(c *session.Claims) { c.Type = session.TypeIdentity })), false},
		{"forged: a ticket id that is not hex", roomSign(s.Keys, with(func(c *session.Claims) { c.TicketID = "zz" })), false},
		{"expired: past its expiry", roomSign(s.Keys, with(func(c *session.Claims) { c.Expires = now.Add(-time.Second).Unix() })), false},
		{"expired: issued too long ago", roomSign(s.Keys, with(func(c *session.Claims) { c.IssuedAt = now.Add(-2 * time.Hour).Unix() })), false},
		{"expired: renewed, but first arrived too long ago", roomSign(s.Keys, with(func(c *session.Claims) { c.Arrival = now.Add(-admission.MaxPlaceAge - time.Minute).UnixNano() })), false},
		{"wrong_lane: a core ticket", roomSign(s.Keys, with(func(c *session.Claims) { c.Lane = "core" })), false},
	}
	for _, tc := range bad {
		back := roomLine(s.Ctrl) + 1
		carry := roomByHeader(tc.token)
		if tc.cookie {
			carry = roomByCookie(tc.token)
		}
		res := testDo(s.Client, roomPost(t, s, "X", roomLoginPath, roomScript, carry))
		if res.Err != nil {
			t.Fatalf("%s: %v", tc.name, res.Err)
		}
		sh := roomWantShed(t, s, res)
		if sh.Place != back || ids[sh.Claims.TicketID] || sh.Claims.Arrival <= c.Claims.Arrival {
			t.Errorf("%s: place %d, ticket %+v; want a new place at the back (%d)", tc.name, sh.Place, sh.Claims, back)
		}
		ids[sh.Claims.TicketID] = true
	}

	// Used twice at once: C waits in line (a browser POST, held the whole
	// hold) while the same ticket is shown again; the copy goes to the back.
	cNav := testGo(s.Client, roomPost(t, s, "C", roomLoginPath, roomNav, roomByCookie(c.Ticket)))
	roomWaitQueued(t, s.Ctrl, 2)
	back := roomLine(s.Ctrl) + 1
	res = testDo(s.Client, roomPost(t, s, "C2", roomLoginPath, roomScript, roomByHeader(c.Ticket)))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	dup := roomWantShed(t, s, res)
	if dup.Place != back || ids[dup.Claims.TicketID] {
		t.Fatalf("ticket shown twice at once: place %d ticket %+v, want a new place at the back (%d)", dup.Place, dup.Claims, back)
	}
	ids[dup.Claims.TicketID] = true

	roomRelease(t, s.App)
	if h := roomNext(t, s.App); h.Who != "B" {
		t.Fatalf("after A: %q, want B", h.Who)
	}
	roomRelease(t, s.App)
	if h := roomNext(t, s.App); h.Who != "C" || h.Header.Get("Sec-Fetch-Mode") != "navigate" {
		t.Fatalf("after B: %q, want C's browser POST in its place", h.Who)
	}
	roomRelease(t, s.App)
	roomWantAdmitted(t, testReceive(t, a), false)
	roomWantAdmitted(t, testReceive(t, b), false)
	roomWantAdmitted(t, testReceive(t, cNav), true)
	testWaitIdle(t, s.Ctrl)

	// Used already: C's ticket again, after C was admitted. Z keeps the
	// app busy so the line is in force (a login finding a free slot and
	// nobody waiting is admitted at once, ticket or not).
	roomSetRate(s.Ctrl, every)
	z := testGo(s.Client, roomPost(t, s, "Z", roomLoginPath, roomScript))
	if h := roomNext(t, s.App); h.Who != "Z" {
		t.Fatalf("%q at the app, want Z", h.Who)
	}
	back = roomLine(s.Ctrl) + 1
	res = testDo(s.Client, roomPost(t, s, "C", roomLoginPath, roomScript, roomByHeader(c.Ticket)))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	used := roomWantShed(t, s, res)
	if used.Place != back || back < 2 || ids[used.Claims.TicketID] {
		t.Fatalf("used ticket: place %d ticket %+v, want a new place at the back (%d)", used.Place, used.Claims, back)
	}
	roomRelease(t, s.App)
	roomWantAdmitted(t, testReceive(t, z), false)
	testWaitIdle(t, s.Ctrl)

	if n := len(s.App.Posts("C")); n != 1 {
		t.Errorf("the app saw %d POSTs from C, want 1", n)
	}
	// issued: C, the 9 bad tickets' new places, the duplicate's, the used
	// one's. accepted: every good signature shown (C early, C's browser, the
	// duplicate, the used one); reused is the controller refusing two.
	roomWantTickets(t, s, map[string]uint64{
		"issued": 12, "redeemed": 1, "accepted": 4, "reused": 2,
		"forged": 5, "expired": 3, "wrong_lane": 1,
	})
}

// A browser's POST is held the whole hold, then told to post again (307 to
// the same URI) with a ticket cookie; lanegate echoes nothing of the form.
// Posting again with the cookie keeps the first arrival's place.
func TestRoomBrowserPostRedirectKeepsPlace(t *testing.T) {
	const hold = 2 * time.Second
	s := roomNewStack(t, hold, true)
	roomSetRate(s.Ctrl, 500*time.Millisecond)
	a := testGo(s.Client, roomPost(t, s, "A", roomLoginPath, roomScript))
	roomNext(t, s.App)

	browser := *s.Client
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	const uri = roomLoginPath + "?next=%2Fhome%2F"
	start := time.Now()
	res := testDo(&browser, roomPost(t, s, "alice", uri, roomNav))
	held := time.Since(start)
	testStatus(t, res, http.StatusTemporaryRedirect)
	if held < hold {
		t.Errorf("browser POST answered after %s, want it held the whole %s hold", held, hold)
	}
	if loc := res.Resp.Header.Get("Location"); loc != uri {
		t.Errorf("Location %q, want the same URI %q", loc, uri)
	}
	if len(res.Body) != 0 {
		t.Errorf("307 body %q, want none", res.Body)
	}
	pw := roomPassword("alice")
	for k, vs := range res.Resp.Header {
		for _, v := range vs {
			if strings.Contains(v, pw) || strings.Contains(v, url.QueryEscape(pw)) {
				t.Errorf("307 header %s echoes the password: %q", k, v)
			}
		}
	}
	if ra, err := strconv.Atoi(res.Resp.Header.Get("Retry-After")); err != nil || ra < 1 || res.Resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("307 headers %v: want Retry-After and no-store", res.Resp.Header)
	}
	_, tok := roomWantTicket(t, s, res)

	// X arrives now, after alice's first arrival but before she posts
	// again; it fits the hold and waits.
	x := testGo(s.Client, roomPost(t, s, "X", roomLoginPath, roomScript))
	roomWaitQueued(t, s.Ctrl, 1)
	// The browser follows the 307 with its own copy of the form and the
	// cookie, as browsers do.
	alice := testGo(&browser, roomPost(t, s, "alice", uri, roomNav, roomByCookie(tok)))
	roomWaitQueued(t, s.Ctrl, 2)

	roomRelease(t, s.App)
	h := roomNext(t, s.App)
	if h.Who != "alice" || h.URI != uri {
		t.Fatalf("after A the app got %q %q, want alice's POST to %q ahead of X", h.Who, h.URI, uri)
	}
	if f, _ := url.ParseQuery(h.Body); f.Get("password") != pw {
		t.Errorf("alice's form reached the app as %q, want her password as posted", h.Body)
	}
	roomRelease(t, s.App)
	if h := roomNext(t, s.App); h.Who != "X" {
		t.Fatalf("then %q, want X", h.Who)
	}
	roomRelease(t, s.App)
	roomWantAdmitted(t, testReceive(t, a), false)
	roomWantAdmitted(t, testReceive(t, alice), true)
	roomWantAdmitted(t, testReceive(t, x), false)
	testWaitIdle(t, s.Ctrl)

	if n := len(s.App.Posts("alice")); n != 1 {
		t.Errorf("the app saw %d POSTs from alice, want 1: the held one never reached it", n)
	}
	st := roomStatus(t, s)
	if st.Redirects != 1 || st.Tickets["issued"] != 1 || st.Tickets["redeemed"] != 1 {
		t.Errorf("status %+v, want 1 redirect, 1 ticket issued and redeemed", st)
	}
	if m := roomMetrics(t, s); m["lanegate_waiting_room_redirects_total"] != 1 {
		t.Errorf("lanegate_waiting_room_redirects_total = %v, want 1", m["lanegate_waiting_room_redirects_total"])
	}
}

// People opening the login page while logins are congested and their turn
// is not near see a waiting page with their place; they get the form once
// their turn is near. Scripts, uncongested times and modes other than
// enforce get the form as before.
func TestRoomWaitingPage(t *testing.T) {
	const hold, every = 3 * time.Second, time.Second
	s := roomNewStack(t, hold, true)
	roomSetRate(s.Ctrl, every)

	// Nobody in line: the form, whatever the rate says.
	res := roomGetPage(t, s, roomNav)
	roomWantForm(t, res)
	if c := roomTicketCookie(res.Resp); c != nil {
		t.Errorf("form served uncongested set a ticket cookie %q", c.Raw)
	}

	a, b := roomBusy(t, s) // B is first in line: 1 s
	// P1 would be second: 2 s, more than half the 3 s hold away.
	p1 := roomWantPage(t, s, roomGetPage(t, s, roomNav))
	if p1.Place != 2 || p1.Wait != "about 2 seconds" || p1.Refresh != 2 {
		t.Fatalf("P1's page %+v, want place 2, about 2 seconds, refresh 2 s", p1)
	}
	// Reloading keeps the place.
	again := roomWantPage(t, s, roomGetPage(t, s, roomNav, roomByCookie(p1.Ticket)))
	if again.Place != 2 || again.Claims.TicketID != p1.Claims.TicketID || again.Claims.Arrival != p1.Claims.Arrival {
		t.Fatalf("P1 reloaded: %+v, want place 2 under the same ticket", again)
	}
	p2 := roomWantPage(t, s, roomGetPage(t, s, roomNav))
	if p2.Place != 3 {
		t.Fatalf("P2's place %d, want 3", p2.Place)
	}

	// Not for scripts, nor for fetches that are not navigations, nor in
	// modes shadow and off.
	roomWantForm(t, roomGetPage(t, s, roomScript))
	roomWantForm(t, roomGetPage(t, s, map[string]string{"Accept": "text/html", "Sec-Fetch-Mode": "cors"}))
	for _, m := range []admission.Mode{admission.Shadow, admission.Off} {
		s.Handler.SetMode(m)
		roomWantForm(t, roomGetPage(t, s, roomNav, roomByCookie(p2.Ticket)))
	}
	s.Handler.SetMode(admission.Enforce)
	if n := roomStatus(t, s).Pages; n != 3 {
		t.Errorf("waiting pages = %d, want 3", n)
	}

	// A and B complete: P1 is first in line, 1 s away, and gets the form,
	// with the ticket renewed for typing time; P2 moves up to place 2.
	roomRelease(t, s.App)
	roomNext(t, s.App)
	roomRelease(t, s.App)
	roomWantAdmitted(t, testReceive(t, a), false)
	roomWantAdmitted(t, testReceive(t, b), false)
	testWaitIdle(t, s.Ctrl)
	roomSetRate(s.Ctrl, every)
	res = roomGetPage(t, s, roomNav, roomByCookie(p1.Ticket))
	roomWantForm(t, res)
	renewed, tok := roomWantTicket(t, s, res)
	if renewed.TicketID != p1.Claims.TicketID || renewed.Arrival != p1.Claims.Arrival {
		t.Errorf("form's ticket %+v, want P1's place %+v", renewed, p1.Claims)
	}
	if c := roomTicketCookie(res.Resp); c.MaxAge < 100 || c.MaxAge > int(waitroom.TypingTime.Seconds()) {
		t.Errorf("form's ticket cookie Max-Age %d, want about the typing time %s", c.MaxAge, waitroom.TypingTime)
	}
	// With the login slot free and nobody in line, P2 is not kept
	// waiting behind a person who is only typing: the form, at once.
	roomWantForm(t, roomGetPage(t, s, roomNav, roomByCookie(p2.Ticket)))
	// With a login in flight again, P2 waits behind P1, at place 2.
	busy := s.Ctrl.Pass(admission.Request{Lane: admission.Login})
	if p := roomWantPage(t, s, roomGetPage(t, s, roomNav, roomByCookie(p2.Ticket))); p.Place != 2 {
		t.Errorf("P2 after two logins completed, a login in flight: place %d, want 2", p.Place)
	}
	busy.Abandon()

	// P1 signs in: in their place, and the ticket is used up.
	p1Login := testGo(s.Client, roomPost(t, s, "P1", roomLoginPath, roomNav, roomByCookie(tok)))
	if h := roomNext(t, s.App); h.Who != "P1" {
		t.Fatalf("%q at the app, want P1", h.Who)
	}
	roomRelease(t, s.App)
	roomWantAdmitted(t, testReceive(t, p1Login), true)
	testWaitIdle(t, s.Ctrl)
	if st := s.Ctrl.Snapshot().Room; st.Redeemed != 1 || st.Away != 1 {
		t.Errorf("room %+v, want P1 redeemed and P2's place kept", st)
	}

	// The page links back to the URI it was asked for, escaped. P2's
	// place alone does not make a waiting page while a login slot is free
	// (P2 may never come back); a login in flight does.
	roomSetRate(s.Ctrl, every)
	if res := roomGetPage(t, s, roomNav); res.Resp.StatusCode != http.StatusOK {
		t.Errorf("a place kept but the login slot free: status %d, want the form (200)", res.Resp.StatusCode)
	}
	busy = s.Ctrl.Pass(admission.Request{Lane: admission.Login})
	defer busy.Abandon()
	req := testRequest(t, http.MethodGet, s.Server.URL+roomLoginPath, roomNav, nil)
	req.URL.RawQuery = `next="><script>alert(1)</script>`
	res = testDo(s.Client, req)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	roomWantPage(t, s, res)
	if body := string(res.Body); strings.Contains(body, "<script>") || !strings.Contains(body, `href="/accounts/login/?next=&#34;&gt;&lt;script&gt;`) {
		t.Errorf("waiting page for a hostile query:\n%s\nwant the URI escaped in its link", body)
	}
}

// /status and /metrics show the waiting room; without it, neither does.
func TestRoomStatusAndMetrics(t *testing.T) {
	const hold, every = 3 * time.Second, 2 * time.Second
	s := roomNewStack(t, hold, true)
	roomSetRate(s.Ctrl, every)
	a, b := roomBusy(t, s)
	res := testDo(s.Client, roomPost(t, s, "C", roomLoginPath, roomScript))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	roomWantShed(t, s, res)
	roomWantPage(t, s, roomGetPage(t, s, roomNav))

	// B waits; C and the person on the page are away: a login arriving
	// now is fourth, 8 s away at one login per 2 s.
	st := roomStatus(t, s)
	if st.Waiting != 1 || st.Away != 2 || st.HoldSeconds != hold.Seconds() || st.Pages != 1 || st.Redirects != 0 {
		t.Errorf("status %+v, want 1 waiting, 2 away, hold 3, 1 page, no redirect", st)
	}
	roomWantAbout(t, "completion_rate", st.CompletionRate, 0.5, 0.01)
	roomWantAbout(t, "estimated_wait_seconds", st.WaitSeconds, 8, 0.2)
	m := roomMetrics(t, s)
	for k, want := range map[string]float64{
		`lanegate_waiting_room_logins{state="waiting"}`: 1,
		`lanegate_waiting_room_logins{state="away"}`:    2,
		`lanegate_waiting_room_pages_total`:             1,
		`lanegate_waiting_room_redirects_total`:         0,
	} {
		if got, ok := m[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	roomWantAbout(t, "lanegate_waiting_room_completion_rate", m["lanegate_waiting_room_completion_rate"], 0.5, 0.01)
	roomWantAbout(t, "lanegate_waiting_room_wait_seconds", m["lanegate_waiting_room_wait_seconds"], 8, 0.2)
	roomWantTickets(t, s, map[string]uint64{"issued": 2})

	roomRelease(t, s.App)
	roomNext(t, s.App)
	roomRelease(t, s.App)
	roomWantAdmitted(t, testReceive(t, a), false)
	roomWantAdmitted(t, testReceive(t, b), false)
	testWaitIdle(t, s.Ctrl)

	// Without the waiting room: no section, no series.
	p := testNewProxy(t, testUpstream(t, testOK).URL, roomLimits(hold), Options{})
	admin := testNewAdmin(t, p, "")
	res = testFetch(t, admin.Client(), http.MethodGet, admin.URL+"/status", nil, nil)
	testStatus(t, res, http.StatusOK)
	var doc map[string]any
	if err := json.Unmarshal(res.Body, &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc["waiting_room"]; ok {
		t.Errorf("status without the waiting room has a waiting_room section: %s", res.Body)
	}
	for k := range testMetrics(t, admin.Client(), admin.URL+"/metrics", nil) {
		if strings.HasPrefix(k, "lanegate_waiting_room_") {
			t.Errorf("metrics without the waiting room have %s", k)
		}
	}
	// And the waiting room needs its keyring.
	u, _ := url.Parse(s.Server.URL)
	if _, err := New(p.Ctrl, Options{Upstream: u, WaitingRoom: true}, nil, nil); err == nil {
		t.Error("New with the waiting room and no keyring: got no error")
	}
}

// The estimate follows the login completion rate: measured from real
// logins through the handler, and following the app as it slows down,
// stalls and speeds up again.
func TestRoomEstimateTracksCompletionRate(t *testing.T) {
	const hold = 3 * time.Second
	s := roomNewStack(t, hold, false) // the app answers logins at once
	if st := roomStatus(t, s); st.CompletionRate != 0 {
		t.Fatalf("completion_rate before any login: %v, want 0 (unknown)", st.CompletionRate)
	}
	loginBurst := func() {
		t.Helper()
		for i := range roomRateWindow {
			res := testDo(s.Client, roomPost(t, s, "burst"+strconv.Itoa(i), roomLoginPath, roomScript))
			roomWantAdmitted(t, res, false)
		}
	}
	// A wait is (logins in line + 1) / rate; check both agree.
	check := func(what string, wantRate, slack float64, line int) waitroom.Status {
		t.Helper()
		st := roomStatus(t, s)
		if st.Waiting+st.Away != line {
			t.Errorf("%s: %d waiting + %d away, want %d in line", what, st.Waiting, st.Away, line)
		}
		roomWantAbout(t, what+": completion_rate", st.CompletionRate, wantRate, slack)
		if st.CompletionRate > 0 {
			roomWantAbout(t, what+": estimated_wait_seconds", st.WaitSeconds, float64(line+1)/st.CompletionRate, 0.01)
		}
		return st
	}

	// 16 logins completing back to back: a fast app. The window spans the
	// time they took, milliseconds under the race detector too.
	loginBurst()
	if st := roomStatus(t, s); st.CompletionRate < 3 || st.WaitSeconds > 1.0/3 {
		t.Fatalf("after a burst of quick logins: rate %v/s, wait %v s; want a fast rate and a short wait", st.CompletionRate, st.WaitSeconds)
	}

	// Three people are away with places: a new arrival is fourth. A login
	// in flight fills the lane, so the estimate is the measured rate
	// alone (with a slot free it would be floored by the lane's capacity).
	for range 3 {
		if _, err := s.Ctrl.Keep("away", 0, time.Time{}, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	busy := s.Ctrl.Pass(admission.Request{Lane: admission.Login})
	// The app slows to one login per 2 s.
	roomSetRate(s.Ctrl, 2*time.Second)
	slow := check("one login per 2 s", 0.5, 0.01, 3)
	roomWantAbout(t, "estimated wait at one login per 2 s", slow.WaitSeconds, 8, 0.2)
	// Logins stop for a minute: the estimate grows instead of promising
	// turns that are not coming.
	roomSetRateAt(s.Ctrl, time.Second, time.Now().Add(-time.Minute))
	stalled := check("stalled a minute", 15.0/75, 0.01, 3)
	roomWantAbout(t, "estimated wait while stalled", stalled.WaitSeconds, 20, 0.5)
	// It speeds up: one per 250 ms.
	roomSetRate(s.Ctrl, 250*time.Millisecond)
	check("one login per 250 ms", 4, 0.1, 3)
	// With the slot free and nobody in line, the floor: this fast app's
	// capacity, whatever the last completions said.
	busy.Abandon()
	roomSetRate(s.Ctrl, 2*time.Second)
	if st := roomStatus(t, s); st.CompletionRate < 5 {
		t.Errorf("slot free, nobody in line, measured 0.5/s: rate %v/s, want the lane's capacity (fast)", st.CompletionRate)
	}
	// And real logins through the handler move it again.
	loginBurst()
	if st := roomStatus(t, s); st.CompletionRate < 5 || st.WaitSeconds > 4.0/5 {
		t.Errorf("after another burst: rate %v/s wait %v s, want faster than 5/s", st.CompletionRate, st.WaitSeconds)
	}
	if m := roomMetrics(t, s); m["lanegate_waiting_room_completion_rate"] < 5 {
		t.Errorf("lanegate_waiting_room_completion_rate = %v, want the burst's rate", m["lanegate_waiting_room_completion_rate"])
	}
	testWaitIdle(t, s.Ctrl)
}

// The waiting page follows the login rules in force: routes changed at run
// time (SIGHUP) gate the new login pages and release the old ones.
func TestRoomWaitingPageFollowsSetRules(t *testing.T) {
	const hold, every = 3 * time.Second, 2 * time.Second
	s := roomNewStack(t, hold, true)
	roomSetRate(s.Ctrl, every)
	a, b := roomBusy(t, s)
	get := func(path string) int {
		res := testFetch(t, s.Client, http.MethodGet, s.Server.URL+path, roomHeaders(roomNav), nil)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		return res.Resp.StatusCode
	}
	if st := get("/signin/"); st != http.StatusOK {
		t.Fatalf("/signin/ before it is a login path: %d, want 200", st)
	}
	if err := s.Handler.SetRules(Rules{Login: []string{"/signin/"}}); err != nil {
		t.Fatal(err)
	}
	if st := get("/signin/"); st != http.StatusServiceUnavailable {
		t.Errorf("/signin/ once it is the login path, while congested: %d, want the waiting page (503)", st)
	}
	if st := get(roomLoginPath); st != http.StatusOK {
		t.Errorf("%s once it is no longer a login path: %d, want 200", roomLoginPath, st)
	}
	roomRelease(t, s.App)
	testReceive(t, a)
	if h := roomNext(t, s.App); h.Who != "B" {
		t.Fatalf("%q at the app, want B", h.Who)
	}
	roomRelease(t, s.App)
	testReceive(t, b)
	testWaitIdle(t, s.Ctrl)
}

// One address that loops opening the login page (for a fresh place) and
// posting in that place is held to the login token buckets, global and
// per client, as if it only posted: a place costs a token when it is
// made, and only coming back in it is free. Once the bucket is empty, the
// page says the line is full without handing out a place, and a login
// without one is rate limited.
func TestRoomPageThenPostLoopPaysTheBucket(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*admission.Limits)
	}{
		{"global", func(l *admission.Limits) { l.LoginRate = admission.RateLimit{Rate: 0.001, Burst: 5} }},
		{"per client", func(l *admission.Limits) {
			l.LoginPerClient = admission.RateLimit{Rate: 0.001, Burst: 5}
			l.MaxClients = 16
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const hold, every = 3 * time.Second, 2 * time.Second
			limits := roomLimits(hold)
			tc.set(&limits)
			s := roomNewStackWith(t, limits, true, Options{})
			roomSetRate(s.Ctrl, every)
			a, b := roomBusy(t, s) // two tokens: three left

			places := map[string]bool{}
			for i := range 10 {
				page := roomGetPage(t, s, roomNav)
				if i >= 3 {
					testStatus(t, page, http.StatusTooManyRequests)
					if page.Resp.Header.Get("Lanegate-Waiting") != "1" || roomTicketCookie(page.Resp) != nil || page.Resp.Header.Get(waitroom.TicketHeader) != "" {
						t.Fatalf("round %d: page headers %v: want the line-full page, without a ticket", i, page.Resp.Header)
					}
					if ra, err := strconv.Atoi(page.Resp.Header.Get("Retry-After")); err != nil || ra < 1 {
						t.Errorf("round %d: line-full page Retry-After %q", i, page.Resp.Header.Get("Retry-After"))
					}
					res := testDo(s.Client, roomPost(t, s, "L", roomLoginPath, roomScript))
					testStatus(t, res, http.StatusTooManyRequests)
					continue
				}
				pg := roomWantPage(t, s, page)
				res := testDo(s.Client, roomPost(t, s, "L", roomLoginPath, roomScript, roomByHeader(pg.Ticket)))
				if res.Err != nil {
					t.Fatal(res.Err)
				}
				sh := roomWantShed(t, s, res)
				if sh.Claims.TicketID != pg.Claims.TicketID {
					t.Fatalf("round %d: the POST got ticket %s, want its page's %s kept", i, sh.Claims.TicketID, pg.Claims.TicketID)
				}
				places[pg.Claims.TicketID] = true
			}
			if len(places) != 3 {
				t.Errorf("places handed out: %d, want the 3 tokens left", len(places))
			}
			roomRelease(t, s.App)
			roomNext(t, s.App)
			roomRelease(t, s.App)
			roomWantAdmitted(t, testReceive(t, a), false)
			roomWantAdmitted(t, testReceive(t, b), false)
			testWaitIdle(t, s.Ctrl)
			if n := len(s.App.Posts("L")); n != 0 {
				t.Errorf("the app saw %d POSTs from the loop, want none", n)
			}
		})
	}
}

// A flood of waiting-page loads from a few addresses, each a fresh place,
// moves a real login's place by at most the per-address cap for each
// address: the places beyond it still rank their holders, but are not
// counted ahead of others. A real login sent away before the flood keeps
// its place.
func TestRoomPageFloodCappedPerAddress(t *testing.T) {
	const (
		hold, every = 3 * time.Second, 4 * time.Second
		flood       = 10_000
		addrs       = 4
		workers     = 8
	)
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	s := roomNewStackWith(t, roomLimits(hold), true, Options{TrustedProxies: trusted})
	roomSetRate(s.Ctrl, every)
	// A login at the app, and none waiting, so that nothing times out
	// however long the flood takes; R1 is first in line, 4 s away, and
	// sent away with its place.
	a := testGo(s.Client, roomPost(t, s, "A", roomLoginPath, roomScript))
	if h := roomNext(t, s.App); h.Who != "A" {
		t.Fatalf("first login at the app: %q, want A", h.Who)
	}
	res := testDo(s.Client, roomPost(t, s, "R1", roomLoginPath, roomScript))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	first := roomWantShed(t, s, res)

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < flood; i += workers {
				req, err := http.NewRequest(http.MethodGet, s.Server.URL+roomLoginPath, nil)
				if err != nil {
					errs <- err
					return
				}
				for k, v := range roomNav {
					req.Header.Set(k, v)
				}
				req.Header.Set("X-Forwarded-For", "198.51.100."+strconv.Itoa(1+i%addrs))
				resp, err := s.Client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Lanegate-Waiting") != "1" {
					errs <- fmt.Errorf("page load %d: status %d, want the waiting page", i, resp.StatusCode)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	if st := s.Ctrl.Snapshot().Room; st.Away > 1+addrs*admission.MaxPagePlacesPerClient || st.Away < 2 {
		t.Errorf("away after the flood: %d, want R1 and at most %d page places per address", st.Away, admission.MaxPagePlacesPerClient)
	}
	res = testDo(s.Client, roomPost(t, s, "R1", roomLoginPath, roomScript, roomByHeader(first.Ticket)))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if back := roomWantShed(t, s, res); back.Place != first.Place {
		t.Errorf("R1 back after the flood: place %d, want still %d", back.Place, first.Place)
	}
	res = testDo(s.Client, roomPost(t, s, "R2", roomLoginPath, roomScript))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	later, most := roomWantShed(t, s, res), first.Place+addrs*admission.MaxPagePlacesPerClient+1
	if later.Place > most {
		t.Errorf("a real login after %d page loads from %d addresses: place %d, want at most %d", flood, addrs, later.Place, most)
	}

	roomRelease(t, s.App)
	roomWantAdmitted(t, testReceive(t, a), false)
	testWaitIdle(t, s.Ctrl)
}
