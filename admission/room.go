package admission

import (
	"math/rand/v2"
	"sync"
	"time"
)

// The login waiting room.
//
// Logins queue in lanegate, where waiting holds no database connection, so
// a login may wait as long as its client is patient. Every login has a
// place in one line, ordered by when it first arrived. A login is held open
// while its expected wait is within the lane's hold (its QueueTimeout);
// beyond that it is answered with a Place: the proxy turns it into a signed
// ticket, and a retry carrying the ticket rejoins the line where it left it,
// not at the back. Places handed out stay in the line while their holders
// are away, so everyone behind them sees a truthful position and wait.

// Place is a login's position in line, kept for it while it is away.
type Place struct {
	// ID names the place; a ticket carries it back.
	ID uint64
	// Arrival is when the login first joined the line: its rank.
	Arrival time.Time
	// Until is when the place lapses if nobody comes back with it.
	Until time.Time
	// Position is the 1-based place in line when it was handed out.
	Position int
	// Wait is the expected time until its turn, from Position and the
	// measured login completion rate.
	Wait time.Duration
}

// RoomStats are the waiting room's counters, in Snapshot.
type RoomStats struct {
	// Waiting are logins held open in the line; Away are places kept for
	// logins that were answered with a ticket and have not come back, as
	// far as they count ahead of others (see MaxPagePlacesPerClient).
	Waiting, Away int
	// Wait is the expected wait of a login arriving now.
	Wait time.Duration
	// Rate is the login completion rate the estimates use, per second:
	// measured, floored by the lane's capacity (see loginRate).
	Rate float64
	// Issued counts places handed out; Redeemed, tickets that came back
	// and took their place; Rejected, tickets refused (used twice at
	// once, already used) and sent to the back.
	Issued, Redeemed, Rejected uint64
}

// rateWindow is how many recent login completions the rate is measured
// over: enough to smooth one slow login, few enough to follow a change
// within seconds under a storm.
const rateWindow = 16

// rateMaxAge drops completions older than this from the estimate, so the
// rate of a storm long over does not linger.
const rateMaxAge = 2 * time.Minute

// room holds the login line's bookkeeping. Its own mutex, taken inside the
// controller's mu where both are needed, never the other way round. Every
// operation on it costs O(log n) in the places kept, or O(1): it runs
// under the controller's mu, which every lane's slow path takes.
type room struct {
	mu   sync.Mutex
	done [rateWindow]time.Time // ring of completion times
	next int
	n    int
	away awaySet
	// present holds the tickets whose holders wait in line now, and
	// whether each place is a waiting-page one (see keep).
	present map[uint64]bool
	used    usedSet

	issued, redeemedN, rejected uint64

	// promised is the latest turn told to a login sent away, and
	// promisedTo its first arrival (see promise).
	promised, promisedTo time.Time
}

func newRoom() *room {
	return &room{away: newAwaySet(), present: map[uint64]bool{}, used: newUsedSet()}
}

// completed records a login completion at now.
func (r *room) completed(now time.Time) {
	r.mu.Lock()
	r.done[r.next] = now
	r.next = (r.next + 1) % rateWindow
	r.n = min(r.n+1, rateWindow)
	r.mu.Unlock()
}

// rate is the login completion rate per second at now, or 0 when too few
// recent completions say. It is (k-1)/(now - oldest) over the last k
// completions: right after a completion it is the recent rate, and it
// decays on its own when completions stop.
func (r *room) rate(now time.Time) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rateLocked(now)
}

func (r *room) rateLocked(now time.Time) float64 {
	k, oldest := 0, time.Time{}
	for i := range r.n {
		t := r.done[(r.next-1-i+rateWindow)%rateWindow]
		if now.Sub(t) > rateMaxAge {
			break
		}
		k, oldest = i+1, t
	}
	if k < 2 {
		return 0
	}
	span := now.Sub(oldest).Seconds()
	if span <= 0 {
		return 0
	}
	return float64(k-1) / span
}

// promise returns the wait to tell a login that first arrived at arrival
// and expects to wait wait from now: never a turn before the latest one
// told to a login that arrived before it. The estimate moves with the
// measured completion rate, which a busy app server swings: a login sent
// away while completions were slow is told a late turn, and one behind it,
// sent away once they sped up, an earlier one. It would come back first
// and be served first, since nobody waits for people who are away.
func (r *room) promise(arrival, now time.Time, wait time.Duration) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if arrival.Before(r.promisedTo) {
		return wait // ahead of the last promise: its own estimate
	}
	turn := now.Add(wait)
	if turn.Before(r.promised) {
		turn = r.promised
	}
	r.promised, r.promisedTo = turn, arrival
	return turn.Sub(now)
}

// purge drops lapsed places and redemption records. Callers hold mu.
func (r *room) purge(now time.Time) {
	r.away.purge(now)
	r.used.purge(now)
}

// awayAhead counts places kept for logins that arrived no later than
// arrival, other than id's own.
func (r *room) awayAhead(arrival time.Time, id uint64) int { return r.away.ahead(arrival, id) }

// arrive takes a login that presents ticket id with the given arrival.
// It returns the arrival the login ranks by: the ticket's when the ticket
// is good, now when it is not (used twice at once, or already used).
func (r *room) arrive(id uint64, arrival, now time.Time) (time.Time, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.purge(now)
	if _, in := r.present[id]; in {
		r.rejected++
		return now, 0
	}
	if r.used.has(id) {
		r.rejected++
		return now, 0
	}
	// A place the room does not hold (never counted, or dropped) is
	// taken for a waiting-page one: only places known to have been made
	// by a login sent away escape the per-client cap.
	page := true
	if n := r.away.get(id); n != nil {
		page = n.page
		r.away.remove(n)
	}
	r.present[id] = page
	return arrival, id
}

// leave ends a ticketed login's presence: admitted (the ticket is used up,
// and refused until until) or not. It returns whether the place is a
// waiting-page one, for a login that keeps it.
func (r *room) leave(id uint64, admitted bool, until time.Time) (page bool) {
	if id == 0 {
		return false
	}
	r.mu.Lock()
	page = r.present[id]
	delete(r.present, id)
	if admitted {
		r.used.add(id, until)
		r.redeemedN++
	}
	r.mu.Unlock()
	return page
}

// spent reports whether ticket id was used already or is in line now:
// either way it keeps no place of its own.
func (r *room) spent(id uint64, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.purge(now)
	_, in := r.present[id]
	return in || r.used.has(id)
}

// maxAway bounds the places kept for logins that are away, so a flood of
// waiting-page loads cannot grow the line without end; beyond it a place
// is still handed out and ranks its holder, but does not count ahead of
// others until its holder is back.
const maxAway = 50_000

// MaxPagePlacesPerClient bounds the waiting-page places of one client
// address that count ahead of others. Anyone can load the login page
// again and again; past the cap, one more place is still handed out and
// ranks its holder when they post, but is not counted ahead of others
// until its holder is back (or, once one of the address's counted places
// goes, until the page is reloaded). Logins from that address are not
// held back; only the positions and waits told to others stop growing
// with its reloads. Places of logins sent away after they posted are not
// capped: each cost a token when it was made, and the posts are what the
// login buckets pace.
const MaxPagePlacesPerClient = 16

// keep records a place for a login that is sent away (page false) or for
// a person on the waiting page (page true), from client. An ID of 0 gets a
// fresh one. A place keeps the kind it was made with.
func (r *room) keep(p Place, client string, page bool) Place {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.ID == 0 {
		p.ID = rand.Uint64() | 1
		r.issued++
	}
	if n := r.away.get(p.ID); n != nil {
		if n.arrival.Equal(p.Arrival) && n.client == client {
			r.away.renew(n, p.Until)
			return p
		}
		page = n.page
		r.away.remove(n)
	}
	if r.away.len() >= maxAway || page && r.away.pagesOf(client) >= MaxPagePlacesPerClient {
		return p
	}
	r.away.add(p.ID, p.Arrival, p.Until, client, page)
	return p
}

// MaxPlaceAge bounds how long a place keeps its first arrival, however
// often it is renewed (a waiting page reloaded, a login sent away again):
// past it, a ticket ranks nobody and its holder joins at the back.
// Without a bound a place renewed forever would keep its rank forever,
// and places could be hoarded. It is also how long a used ticket is
// remembered: no ticket can rank anyone later, so none needs refusing
// later.
const MaxPlaceAge = time.Hour

// placeUsable reports whether a ticket's first arrival may still rank its
// holder at now: not from the future, not older than MaxPlaceAge.
func placeUsable(arrival, now time.Time) bool {
	return !arrival.IsZero() && !arrival.After(now) && now.Sub(arrival) <= MaxPlaceAge
}

// placeUntil is until, or sooner if the place would outlive MaxPlaceAge
// from its first arrival.
func placeUntil(arrival, until time.Time) time.Time {
	if limit := arrival.Add(MaxPlaceAge); until.After(limit) {
		return limit
	}
	return until
}

// placeGrace is how long a place is kept beyond its expected turn for a
// login that was sent away: a client that honours Retry-After late, or a
// person who takes a while to type, still finds it.
func placeGrace(hold time.Duration) time.Duration { return max(2*hold, time.Minute) }

// Line reports the place a login would have in line now: with a ticket
// (id and its first arrival) the place it kept, otherwise a new arrival's
// at the back. It changes nothing.
func (c *Controller) Line(id uint64, arrival time.Time) (position int, wait time.Duration) {
	now := c.clock.Now()
	if id == 0 || !placeUsable(arrival, now) {
		id, arrival = 0, now
	}
	r := Request{Lane: Login, Ticket: id, Arrival: arrival}
	c.mu.Lock()
	defer c.mu.Unlock()
	ahead := c.queues[Login].countBefore(arrival) + c.awayAhead(&r)
	return ahead + 1, c.loginWait(ahead, c.state.Load(), now)
}

// Keep holds a place in the login line until until for a person who is
// not in line yet, client: on the waiting page, or typing the password on
// a form shown at their turn. id 0 with a zero arrival makes a new place
// at the back; otherwise the place id keeps its first arrival, for at most
// MaxPlaceAge.
//
// A new place costs a login token from the buckets, global and client's,
// as a login posted now would: a ticket is then proof of payment, and a
// login back with one pays nothing. Were places free, one client could
// open the login page and post with the fresh place in a loop and no
// bucket would ever count it. When the buckets have no token, Keep makes
// no place and returns a *ShedError wrapping ErrRateLimited with the wait
// until one is due. Renewing a place is free.
func (c *Controller) Keep(client string, id uint64, arrival, until time.Time) (Place, error) {
	now := c.clock.Now()
	if id == 0 || !placeUsable(arrival, now) || c.room.spent(id, now) {
		if _, wait := c.buckets.Load().take(now, client); wait > 0 {
			return Place{}, &ShedError{Lane: Login, Err: ErrRateLimited, RetryAfter: wait}
		}
		id, arrival = 0, now
	}
	r := Request{Lane: Login, Ticket: id, Arrival: arrival}
	c.mu.Lock()
	defer c.mu.Unlock()
	ahead := c.queues[Login].countBefore(arrival) + c.awayAhead(&r)
	return c.room.keep(Place{ID: id, Arrival: arrival, Until: placeUntil(arrival, until), Position: ahead + 1,
		Wait: c.loginWait(ahead, c.state.Load(), now)}, client, true), nil
}

// LoginCongested reports whether a login arriving now would have to
// wait: logins are waiting in line, or places are kept for logins that are
// away and the login lane has no free slot. Places alone, with slots free,
// are people who may never come back; nobody waits for them.
func (c *Controller) LoginCongested() bool {
	if c.lanes[Login].queued.Load() > 0 {
		return true
	}
	if canAdmit(c.state.Load(), c.limits.Load(), Login) {
		return false
	}
	c.room.mu.Lock()
	defer c.room.mu.Unlock()
	c.room.purge(c.clock.Now())
	return c.room.away.len() > 0
}

// roomStats fills RoomStats.
func (c *Controller) roomStats(s uint64) RoomStats {
	now := c.clock.Now()
	c.room.mu.Lock()
	c.room.purge(now)
	st := RoomStats{Away: c.room.away.len(),
		Issued: c.room.issued, Redeemed: c.room.redeemedN, Rejected: c.room.rejected}
	c.room.mu.Unlock()
	st.Rate = c.loginRate(now)
	st.Waiting = int(c.lanes[Login].queued.Load())
	st.Wait = c.loginWait(st.Waiting+st.Away, s, now)
	return st
}

// LoginHold is how long a login is held in line before it is sent away
// with its place: the login lane's queue timeout.
func (c *Controller) LoginHold() time.Duration { return c.limits.Load().Lane[Login].QueueTimeout }

// Rank is a login's place in a line that a fleet of lanegates shares, as
// the fleet gave it on the login's arrival (see Request.Fleet).
type Rank struct {
	// ID names the place fleet-wide, and Arrival is when the login first
	// arrived, by the fleet's one clock: ranks compare across replicas.
	ID      uint64
	Arrival time.Time
	// Ahead counts the places ahead of it across the fleet, waiting or
	// away, when it arrived.
	Ahead int
	// Fresh says the login took a new place (it had no good ticket), so
	// it pays its login token as any new arrival does.
	Fresh bool
}

// LoginPace returns the measured login completion rate per second, and how
// many logins have arrived in all (every one ends in one decision): what a
// fleet member reports, for the line's pace and its part of the login rate.
func (c *Controller) LoginPace() (rate float64, arrivals uint64) {
	for d := range c.lanes[Login].decisions {
		arrivals += c.lanes[Login].decisions[d].Load()
	}
	return c.room.rate(c.clock.Now()), arrivals
}
