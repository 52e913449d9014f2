// Package waitroom is the HTTP side of the login waiting room: the
// admission controller keeps the line (admission's room.go); here places
// become signed tickets and back, and people opening the login page during
// a storm get a page that shows their place and moves on by itself.
package waitroom

import (
	"errors"
	"fmt"
	"html"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/reply"
	"github.com/lanegate/lanegate/session"
)

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

// TypingTime is how long a place is kept for a person shown the login form
// at their turn: long enough to type a password.
const TypingTime = 2 * time.Minute

// Line is what the waiting room needs of the admission controller's login
// line (admission.Controller).
type Line interface {
	Line(id uint64, arrival time.Time) (position int, wait time.Duration)
	// Keep keeps or renews client's place; a new place costs a login
	// token, and without one Keep returns an *admission.ShedError.
	Keep(client string, id uint64, arrival, until time.Time) (admission.Place, error)
	LoginCongested() bool
	LoginHold() time.Duration
}

// Room is the waiting room's HTTP side. It is safe for concurrent use.
type Room struct {
	line    Line
	tickets *session.Keyring
	secure  func(*http.Request) bool
	clock   clockwork.Clock
	counts  counters
}

// Option configures a Room.
type Option func(*Room)

// WithClock makes the room read time from clock; tests pass a fake.
func WithClock(clock clockwork.Clock) Option { return func(rm *Room) { rm.clock = clock } }

// New returns the waiting room over the controller's line. tickets signs
// and verifies tickets; secure reports whether a client reached lanegate
// over HTTPS, so that its ticket cookie is marked Secure.
func New(line Line, tickets *session.Keyring, secure func(*http.Request) bool, opts ...Option) *Room {
	rm := &Room{line: line, tickets: tickets, secure: secure, clock: clockwork.NewRealClock()}
	for _, o := range opts {
		o(rm)
	}
	return rm
}

// Hold is the login hold in force: how long a login is held in line.
func (rm *Room) Hold() time.Duration { return rm.line.LoginHold() }

// counters count what the HTTP side of the waiting room did.
type counters struct {
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

// Ticket is a verified ticket: the place it keeps in the login line.
type Ticket struct {
	ID      uint64
	Arrival time.Time
}

// Ticket returns the request's ticket when it is good. A bad one is
// counted and ignored: its holder simply joins at the back.
func (rm *Room) Ticket(r *http.Request, now time.Time) (Ticket, bool) {
	tok := r.Header.Get(TicketHeader)
	if tok == "" {
		if c, err := r.Cookie(TicketCookie); err == nil {
			tok = c.Value
		}
	}
	if tok == "" {
		return Ticket{}, false
	}
	c, err := rm.tickets.Verify(tok, session.TypeTicket, now, session.Window{MaxAge: ticketMaxAge, Skew: 5 * time.Second})
	switch {
	case errors.Is(err, session.ErrStale) || err == nil && now.Unix() >= c.Expires:
		rm.counts.ticketsBad[ticketExpired].Add(1)
		return Ticket{}, false
	case err != nil:
		rm.counts.ticketsBad[ticketForged].Add(1)
		return Ticket{}, false
	case c.Lane != admission.Login.String():
		rm.counts.ticketsBad[ticketWrongLane].Add(1)
		return Ticket{}, false
	}
	id, err := strconv.ParseUint(c.TicketID, 16, 64)
	if err != nil || id == 0 || c.Arrival <= 0 {
		rm.counts.ticketsBad[ticketForged].Add(1)
		return Ticket{}, false
	}
	arrival := time.Unix(0, c.Arrival)
	if now.Sub(arrival) > admission.MaxPlaceAge {
		// Renewed all along, but a place keeps its rank only so long.
		rm.counts.ticketsBad[ticketExpired].Add(1)
		return Ticket{}, false
	}
	rm.counts.ticketsTaken.Add(1)
	return Ticket{ID: id, Arrival: arrival}, true
}

// giveTicket signs p into a ticket and sets it as cookie and header.
func (rm *Room) giveTicket(w http.ResponseWriter, r *http.Request, p admission.Place, now time.Time) {
	tok := rm.tickets.Sign(&session.Claims{
		Type: session.TypeTicket, Lane: admission.Login.String(),
		Arrival: p.Arrival.UnixNano(), TicketID: strconv.FormatUint(p.ID, 16),
		Expires: p.Until.Unix(), IssuedAt: now.Unix(),
	})
	hd := w.Header()
	hd.Set(TicketHeader, tok)
	c := &http.Cookie{
		Name: TicketCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		MaxAge: max(1, int(p.Until.Sub(now).Seconds())),
		Secure: rm.secure(r),
	}
	hd.Add("Set-Cookie", c.String())
}

// DropTicket deletes a used ticket's cookie.
func DropTicket(w http.ResponseWriter) {
	w.Header().Add("Set-Cookie", (&http.Cookie{Name: TicketCookie, Value: "", Path: "/", MaxAge: -1}).String())
}

// RetryAfter is the Retry-After, in seconds, for a place: a little before its expected
// turn, so the retry is held briefly and admitted at its turn rather than
// arriving just after it.
func RetryAfter(wait, hold time.Duration) int {
	return max(1, int((wait-hold/2).Seconds()+0.999))
}

// IsNavigation reports whether a person's browser made the request (a page
// load or form submission), as opposed to a script.
func IsNavigation(r *http.Request) bool {
	if m := r.Header.Get("Sec-Fetch-Mode"); m != "" {
		return m == "navigate"
	}
	return !reply.WantsJSON(r) && strings.Contains(r.Header.Get("Accept"), "text/html")
}

// GatePage decides whether a person opening a login page waits first;
// client keys their address, as for the per-client login bucket. It
// answers and returns true when it served a waiting page.
//
// A person who needs a new place pays a login token for it, as a login
// would (see admission.Controller.Keep). When none is due they get a page
// that says so and tries again by itself, without a place: a place handed
// out free would let one address open the page and post in its place in a
// loop, past every bucket.
func (rm *Room) GatePage(w http.ResponseWriter, r *http.Request, client string) bool {
	now := rm.clock.Now()
	t, ok := rm.Ticket(r, now)
	if !ok && !rm.line.LoginCongested() {
		return false
	}
	_, wait := rm.line.Line(t.ID, t.Arrival)
	if wait <= rm.Hold()/2 {
		// Their turn is near: show the form, and keep their place while
		// they type, so the POST ranks by their first arrival. Without a
		// token for a new place, the form alone: the POST pays.
		if ok {
			if p, err := rm.line.Keep(client, t.ID, t.Arrival, now.Add(TypingTime)); err == nil {
				rm.giveTicket(w, r, p, now)
			}
		}
		return false
	}
	// The page comes back within refresh seconds; a place not refreshed
	// for three of them belongs to someone who left.
	p, err := rm.line.Keep(client, t.ID, t.Arrival, now.Add(3*time.Duration(pageRefresh(wait, rm.Hold()))*time.Second))
	var se *admission.ShedError
	switch {
	case errors.As(err, &se):
		rm.counts.pages.Add(1)
		writeLineFullPage(w, r, se.RetryAfter)
		return true
	case err != nil:
		return false // not the line's answer: let the app serve the form
	}
	rm.giveTicket(w, r, p, now)
	rm.counts.pages.Add(1)
	writeWaitingPage(w, r, p, rm.Hold())
	return true
}

// Answer answers a login the controller sent away with a place: a ticket,
// Retry-After, and a waiting page, a JSON body or a 307 to post again.
func (rm *Room) Answer(w http.ResponseWriter, r *http.Request, se *admission.ShedError) {
	now := rm.clock.Now()
	p := *se.Place
	rm.giveTicket(w, r, p, now)
	retry := RetryAfter(p.Wait, rm.Hold())
	hd := w.Header()
	hd.Set("Retry-After", strconv.Itoa(retry))
	hd.Set("Cache-Control", "no-store")
	if IsNavigation(r) && errors.Is(se, admission.ErrQueueTimeout) {
		// Held a whole hold already: the browser re-sends its own form at
		// once and is held again, in its place.
		rm.counts.redirects.Add(1)
		hd.Set("Location", r.URL.RequestURI())
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	if reply.WantsJSON(r) || !IsNavigation(r) {
		hd.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"error":"overloaded","reason":%q,"lane":"login","retry_after":%d,"place":%d,"wait_seconds":%d}`+"\n",
			reply.ShedReason(se), retry, p.Position, int(p.Wait.Seconds()+0.5))
		return
	}
	writeWaitingPage(w, r, p, rm.Hold())
}

// writeWaitingPage serves the waiting page: the place and expected wait,
// refreshed by the browser itself. It is tiny and self-contained, like the
// shed page, because under a storm it is served thousands of times.
func writeWaitingPage(w http.ResponseWriter, r *http.Request, p admission.Place, hold time.Duration) {
	refresh := pageRefresh(p.Wait, hold)
	hd := w.Header()
	hd.Set("Retry-After", strconv.Itoa(RetryAfter(p.Wait, hold)))
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Lanegate-Waiting", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	if r.Method == http.MethodHead {
		return
	}
	fmt.Fprintf(w, waitingPage, refresh, p.Position, waitText(p.Wait), html.EscapeString(r.URL.RequestURI()))
}

// writeLineFullPage serves a person who found no token for a place: the
// line takes newcomers only as fast as the login buckets allow. The page
// has no place to show; it tries again by itself when a token is due.
func writeLineFullPage(w http.ResponseWriter, r *http.Request, retry time.Duration) {
	after := reply.RetryAfterSeconds(retry, 0)
	hd := w.Header()
	hd.Set("Retry-After", strconv.Itoa(after))
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Lanegate-Waiting", "1")
	w.WriteHeader(http.StatusTooManyRequests)
	if r.Method == http.MethodHead {
		return
	}
	fmt.Fprintf(w, lineFullPage, min(max(after, 2), 10), html.EscapeString(r.URL.RequestURI()))
}

// pageRefresh is how often the waiting page reloads itself, in seconds:
// as the turn nears, but at least every 10 s so the place moves on.
func pageRefresh(wait, hold time.Duration) int { return min(max(RetryAfter(wait, hold), 2), 10) }

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

const lineFullPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Please wait</title>
<meta http-equiv="refresh" content="%d">
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}</style>
</head><body><h1>Many people are signing in right now</h1>
<p id="lanegate-line-full">The line is taking newcomers a few at a time. Keep this page open: it tries again by itself and gives you a place in line as soon as it can.</p>
<p><small><a href="%s">Try again now</a></small></p>
</body></html>
`

// Tickets is every ticket count by outcome, the controller's (rs) and the
// HTTP side's.
func (rm *Room) Tickets(rs admission.RoomStats) map[string]uint64 {
	rc := &rm.counts
	m := map[string]uint64{
		"issued": rs.Issued, "redeemed": rs.Redeemed, "reused": rs.Rejected,
		"accepted": rc.ticketsTaken.Load(),
	}
	for i, name := range ticketFaultNames {
		m[name] = rc.ticketsBad[i].Load()
	}
	return m
}

// Pages is how many waiting pages were served.
func (rm *Room) Pages() uint64 { return rm.counts.pages.Load() }

// Redirects is how many browser login POSTs were held a whole hold and
// answered 307 to post again in their place.
func (rm *Room) Redirects() uint64 { return rm.counts.redirects.Load() }

// Status is the waiting room in the /status document.
type Status struct {
	Waiting        int               `json:"waiting"`
	Away           int               `json:"away"`
	WaitSeconds    float64           `json:"estimated_wait_seconds"`
	CompletionRate float64           `json:"completion_rate"`
	HoldSeconds    float64           `json:"hold_seconds"`
	Tickets        map[string]uint64 `json:"tickets"`
	Pages          uint64            `json:"waiting_pages"`
	Redirects      uint64            `json:"redirects"`
}

// Status is the waiting room's state for /status; nil on a nil Room, so
// that a waiting room switched off is absent from the document.
func (rm *Room) Status(rs admission.RoomStats) *Status {
	if rm == nil {
		return nil
	}
	return &Status{
		Waiting: rs.Waiting, Away: rs.Away, WaitSeconds: rs.Wait.Seconds(), CompletionRate: rs.Rate,
		HoldSeconds: rm.Hold().Seconds(), Tickets: rm.Tickets(rs),
		Pages: rm.Pages(), Redirects: rm.Redirects(),
	}
}
