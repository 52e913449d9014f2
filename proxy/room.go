package proxy

import (
	"errors"
	"fmt"
	"html"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/reply"
	"github.com/lanegate/lanegate/session"
)

// The login waiting room, HTTP side. The controller keeps the line (see
// admission's room.go); here places become signed tickets and back.
//
// Where it gates:
//   - The login form's GET, for people: when logins are congested, someone
//     opening the login page gets a small waiting page with their place and
//     expected wait that refreshes by itself, and the form only when their
//     turn is near. They type their password once, when it will be used at
//     once; their ticket cookie then ranks the POST by their first arrival.
//   - The POST, for everyone: it is held in line up to LANEGATE_LOGIN_MAX_HOLD.
//     A script gets 503, Retry-After and a ticket (header and cookie) when its
//     turn is further. A browser's POST is held the whole hold and then
//     answered 307 to the same URL: the browser itself sends its form again,
//     ticket cookie included, and lanegate never stores or echoes a password.

// Names of the ticket on the wire.
const (
	TicketHeader = "Lanegate-Ticket"
	TicketCookie = "lanegate_ticket"
)

// ticketMaxAge bounds how old a ticket may be whatever its expiry says.
const ticketMaxAge = time.Hour

// typingTime is how long a place is kept for a person shown the login form
// at their turn: long enough to type a password.
const typingTime = 2 * time.Minute

// Room is what the handler needs of the controller's waiting room.
type Room interface {
	Line(id uint64, arrival time.Time) (position int, wait time.Duration)
	Keep(id uint64, arrival, until time.Time) admission.Place
	LoginCongested() bool
	LoginHold() time.Duration
}

// roomState is the handler's waiting room; Room is nil when it is off.
type roomState struct {
	Room     Room
	counters roomCounters
}

// hold is the login hold in force.
func (h *Handler) hold() time.Duration { return h.room.Room.LoginHold() }

// isTrustedPeer reports whether the request's peer is a trusted proxy.
func (h *Handler) isTrustedPeer(r *http.Request) bool {
	a, ok := peerAddr(r)
	return ok && h.isTrusted(a)
}

// roomCounters count what the HTTP side of the waiting room did.
type roomCounters struct {
	pages        atomic.Uint64 // waiting pages served
	redirects    atomic.Uint64 // browser POSTs answered 307
	ticketsBad   [numTicketFaults]atomic.Uint64
	ticketsTaken atomic.Uint64 // tickets accepted at the door
}

// Reasons a ticket is not honoured; each sends its holder to the back.
const (
	ticketForged = iota // bad signature, malformed, unknown key
	ticketExpired
	ticketWrongLane
	numTicketFaults
)

var ticketFaultNames = [numTicketFaults]string{"forged", "expired", "wrong_lane"}

// ticket is a verified ticket.
type ticket struct {
	id      uint64
	arrival time.Time
}

// readTicket returns the request's ticket when it is good. A bad one is
// counted and ignored: its holder simply joins at the back.
func (h *Handler) readTicket(r *http.Request, now time.Time) (ticket, bool) {
	tok := r.Header.Get(TicketHeader)
	if tok == "" {
		if c, err := r.Cookie(TicketCookie); err == nil {
			tok = c.Value
		}
	}
	if tok == "" {
		return ticket{}, false
	}
	c, err := h.tickets.Verify(tok, session.TypeTicket, now, session.Window{MaxAge: ticketMaxAge, Skew: 5 * time.Second})
	switch {
	case errors.Is(err, session.ErrStale) || err == nil && now.Unix() >= c.Expires:
		h.room.counters.ticketsBad[ticketExpired].Add(1)
		return ticket{}, false
	case err != nil:
		h.room.counters.ticketsBad[ticketForged].Add(1)
		return ticket{}, false
	case c.Lane != admission.Login.String():
		h.room.counters.ticketsBad[ticketWrongLane].Add(1)
		return ticket{}, false
	}
	id, err := strconv.ParseUint(c.TicketID, 16, 64)
	if err != nil || id == 0 || c.Arrival <= 0 {
		h.room.counters.ticketsBad[ticketForged].Add(1)
		return ticket{}, false
	}
	h.room.counters.ticketsTaken.Add(1)
	return ticket{id: id, arrival: time.Unix(0, c.Arrival)}, true
}

// giveTicket signs p into a ticket and sets it as cookie and header.
func (h *Handler) giveTicket(w http.ResponseWriter, r *http.Request, p admission.Place, now time.Time) {
	tok := h.tickets.Sign(&session.Claims{
		Type: session.TypeTicket, Lane: admission.Login.String(),
		Arrival: p.Arrival.UnixNano(), TicketID: strconv.FormatUint(p.ID, 16),
		Expires: p.Until.Unix(), IssuedAt: now.Unix(),
	})
	hd := w.Header()
	hd.Set(TicketHeader, tok)
	c := &http.Cookie{
		Name: TicketCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		MaxAge: max(1, int(p.Until.Sub(now).Seconds())),
		Secure: r.TLS != nil || (h.isTrustedPeer(r) && r.Header.Get("X-Forwarded-Proto") == "https"),
	}
	hd.Add("Set-Cookie", c.String())
}

// dropTicket deletes a used ticket's cookie.
func dropTicket(w http.ResponseWriter) {
	w.Header().Add("Set-Cookie", (&http.Cookie{Name: TicketCookie, Value: "", Path: "/", MaxAge: -1}).String())
}

// comeBackIn is the Retry-After for a place: a little before its expected
// turn, so the retry is held briefly and admitted at its turn rather than
// arriving just after it.
func comeBackIn(wait, hold time.Duration) int {
	return max(1, int((wait-hold/2).Seconds()+0.999))
}

// isNavigation reports whether a person's browser made the request (a page
// load or form submission), as opposed to a script.
func isNavigation(r *http.Request) bool {
	if m := r.Header.Get("Sec-Fetch-Mode"); m != "" {
		return m == "navigate"
	}
	return !reply.WantsJSON(r) && strings.Contains(r.Header.Get("Accept"), "text/html")
}

// gateLoginPage decides whether a person opening a login page waits first.
// It answers and returns true when it served the waiting page.
func (h *Handler) gateLoginPage(w http.ResponseWriter, r *http.Request) bool {
	now := time.Now()
	t, ok := h.readTicket(r, now)
	if !ok && !h.room.Room.LoginCongested() {
		return false
	}
	pos, wait := h.room.Room.Line(t.id, t.arrival)
	if wait <= h.hold()/2 {
		// Their turn is near: show the form, and keep their place while
		// they type, so the POST ranks by their first arrival.
		if ok {
			p := h.room.Room.Keep(t.id, t.arrival, now.Add(typingTime))
			h.giveTicket(w, r, p, now)
		}
		return false
	}
	// The page comes back within refresh seconds; a place not refreshed
	// for three of them belongs to someone who left.
	p := h.room.Room.Keep(t.id, t.arrival, now.Add(3*time.Duration(pageRefresh(wait, h.hold()))*time.Second))
	p.Position, p.Wait = pos, wait
	h.giveTicket(w, r, p, now)
	h.room.counters.pages.Add(1)
	writeWaitingPage(w, r, p, h.hold())
	return true
}

// answerLogin answers a login the controller sent away with a place.
func (h *Handler) answerLogin(w http.ResponseWriter, r *http.Request, se *admission.ShedError) {
	now := time.Now()
	p := *se.Place
	h.giveTicket(w, r, p, now)
	retry := comeBackIn(p.Wait, h.hold())
	hd := w.Header()
	hd.Set("Retry-After", strconv.Itoa(retry))
	hd.Set("Cache-Control", "no-store")
	if isNavigation(r) && errors.Is(se, admission.ErrQueueTimeout) {
		// Held a whole hold already: the browser re-sends its own form at
		// once and is held again, in its place.
		h.room.counters.redirects.Add(1)
		hd.Set("Location", r.URL.RequestURI())
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	if reply.WantsJSON(r) || !isNavigation(r) {
		hd.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"error":"overloaded","reason":%q,"lane":"login","retry_after":%d,"place":%d,"wait_seconds":%d}`+"\n",
			reply.ShedReason(se), retry, p.Position, int(p.Wait.Seconds()+0.5))
		return
	}
	writeWaitingPage(w, r, p, h.hold())
}

// writeWaitingPage serves the waiting page: the place and expected wait,
// refreshed by the browser itself. It is tiny and self-contained, like the
// shed page, because under a storm it is served thousands of times.
func writeWaitingPage(w http.ResponseWriter, r *http.Request, p admission.Place, hold time.Duration) {
	refresh := pageRefresh(p.Wait, hold)
	hd := w.Header()
	hd.Set("Retry-After", strconv.Itoa(comeBackIn(p.Wait, hold)))
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Lanegate-Waiting", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	if r.Method == http.MethodHead {
		return
	}
	fmt.Fprintf(w, waitingPage, refresh, p.Position, waitText(p.Wait), html.EscapeString(r.URL.RequestURI()))
}

// pageRefresh is how often the waiting page reloads itself, in seconds:
// as the turn nears, but at least every 10 s so the place moves on.
func pageRefresh(wait, hold time.Duration) int { return min(max(comeBackIn(wait, hold), 2), 10) }

func waitText(d time.Duration) string {
	switch s := int(d.Seconds() + 0.5); {
	case s < 60:
		return fmt.Sprintf("about %d seconds", max(s, 1))
	case s < 3600:
		return fmt.Sprintf("about %d minutes", (s+30)/60)
	default:
		return "more than an hour"
	}
}

const waitingPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>You are in line</title>
<meta http-equiv="refresh" content="%d">
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}
.place{font-size:3rem;font-weight:700;margin:.5rem 0}</style>
</head><body><h1>Many people are signing in right now</h1>
<p>You are number</p><p class="place" id="lanegate-place">%d</p>
<p>in line. Expected wait: <strong id="lanegate-wait">%s</strong>.</p>
<p>Keep this page open: it moves on by itself and shows the sign-in form when it is your turn. Your place is kept if you reload.</p>
<p><small><a href="%s">Refresh now</a></small></p>
</body></html>
`

// roomTickets is every ticket count by outcome, controller and HTTP side.
func roomTickets(rs admission.RoomStats, rc *roomCounters) map[string]uint64 {
	m := map[string]uint64{
		"issued": rs.Issued, "redeemed": rs.Redeemed, "reused": rs.Rejected,
		"accepted": rc.ticketsTaken.Load(),
	}
	for i, name := range ticketFaultNames {
		m[name] = rc.ticketsBad[i].Load()
	}
	return m
}

// RoomStatus is the waiting room in the /status document.
type RoomStatus struct {
	Waiting        int               `json:"waiting"`
	Away           int               `json:"away"`
	WaitSeconds    float64           `json:"estimated_wait_seconds"`
	CompletionRate float64           `json:"completion_rate"`
	HoldSeconds    float64           `json:"hold_seconds"`
	Tickets        map[string]uint64 `json:"tickets"`
	Pages          uint64            `json:"waiting_pages"`
	Redirects      uint64            `json:"redirects"`
}

func (h *Handler) roomStatus(rs admission.RoomStats) *RoomStatus {
	if h.room.Room == nil {
		return nil
	}
	rc := &h.room.counters
	return &RoomStatus{
		Waiting: rs.Waiting, Away: rs.Away, WaitSeconds: rs.Wait.Seconds(), CompletionRate: rs.Rate,
		HoldSeconds: h.hold().Seconds(), Tickets: roomTickets(rs, rc),
		Pages: rc.pages.Load(), Redirects: rc.redirects.Load(),
	}
}
