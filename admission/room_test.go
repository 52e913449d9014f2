package admission

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// roomLimits: one login at a time, held up to 12 s.
func roomLimits() Limits {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: 10, QueueTimeout: time.Second}
	l.Lane[Login] = LaneLimits{Reserved: 1, Max: 1, Queue: 10, QueueTimeout: 12 * time.Second}
	return l
}

// setRate makes the measured login completion rate one per every, as
// seen at the fake clock's now.
func setRate(c *Controller, clock *clockwork.FakeClock, every time.Duration) {
	now := clock.Now()
	for i := rateWindow - 1; i >= 0; i-- {
		c.room.completed(now.Add(-time.Duration(i) * every))
	}
}

func TestCompletionRateTracksChange(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	if r := c.room.rate(clock.Now()); r != 0 {
		t.Fatalf("rate with no completions = %v, want 0 (unknown)", r)
	}
	for range 20 {
		clock.Advance(500 * time.Millisecond)
		c.room.completed(clock.Now())
	}
	if r := c.room.rate(clock.Now()); math.Abs(r-2) > 0.01 {
		t.Fatalf("rate at one per 0.5 s = %v, want 2", r)
	}
	// The app slows down: one login every 2 s. Within a window the
	// estimate has followed.
	for range rateWindow {
		clock.Advance(2 * time.Second)
		c.room.completed(clock.Now())
	}
	if r := c.room.rate(clock.Now()); math.Abs(r-0.5) > 0.01 {
		t.Fatalf("rate at one per 2 s = %v, want 0.5", r)
	}
	// Completions stop: the estimate decays instead of promising turns
	// that are not coming.
	clock.Advance(30 * time.Second)
	if r := c.room.rate(clock.Now()); r > 0.25 {
		t.Fatalf("rate 30 s after the last completion = %v, want it well under 0.5", r)
	}
	clock.Advance(rateMaxAge)
	if r := c.room.rate(clock.Now()); r != 0 {
		t.Fatalf("rate long after the last completion = %v, want 0", r)
	}
}

// enqueueLogin starts a login expected to wait and returns once it waits.
func enqueueLogin(t *testing.T, c *Controller, clock *clockwork.FakeClock, r Request, waitersBefore int) <-chan result {
	t.Helper()
	r.Lane = Login
	return enqueueReq(t, c, clock, r, waitersBefore)
}

// mustKeep keeps a place for client and fails the test if it cannot.
func mustKeep(t *testing.T, c *Controller, client string, id uint64, arrival, until time.Time) Place {
	t.Helper()
	p, err := c.Keep(client, id, arrival, until)
	if err != nil {
		t.Fatalf("Keep(%q, %x, %s): %v", client, id, arrival, err)
	}
	return p
}

func mustShedWithPlace(t *testing.T, c *Controller, r Request) *Place {
	t.Helper()
	r.Lane = Login
	_, err := c.Acquire(context.Background(), r)
	var se *ShedError
	if !errors.As(err, &se) || se.Place == nil {
		t.Fatalf("Acquire(%+v) = %v, want a shed keeping a place", r, err)
	}
	return se.Place
}

// Logins complete in order of first arrival, across retries: one sent
// away with a place comes back ahead of everyone who arrived after it.
func TestCompletionsFollowFirstArrival(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	setRate(c, clock, 5*time.Second) // 0.2 logins/s: position k waits 5k s
	busy := mustAcquire(t, c, Login)

	clock.Advance(time.Millisecond)
	a := enqueueLogin(t, c, clock, Request{}, 0) // position 1: 5 s
	clock.Advance(time.Millisecond)
	b := enqueueLogin(t, c, clock, Request{}, 1) // position 2: 10 s
	clock.Advance(time.Millisecond)
	cPlace := mustShedWithPlace(t, c, Request{}) // position 3: 15 s > 12 s hold
	if cPlace.Position != 3 {
		t.Fatalf("C's place = %+v, want position 3", cPlace)
	}
	if want := 15 * time.Second; cPlace.Wait < want-time.Second || cPlace.Wait > want+time.Second {
		t.Fatalf("C's expected wait = %s, want about %s", cPlace.Wait, want)
	}
	clock.Advance(time.Millisecond)
	dPlace := mustShedWithPlace(t, c, Request{})
	if dPlace.Position != 4 {
		t.Fatalf("D's place = %+v, want position 4: C's kept place counts ahead of D", dPlace)
	}

	// C comes back with its ticket and waits (a patient browser POST):
	// it ranks by its first arrival, ahead of D and of E, who arrives now.
	clock.Advance(time.Millisecond)
	cBack := enqueueLogin(t, c, clock, Request{Ticket: cPlace.ID, Arrival: cPlace.Arrival, Patient: true}, 2)
	clock.Advance(time.Millisecond)
	e := enqueueLogin(t, c, clock, Request{Patient: true}, 3)
	clock.Advance(time.Millisecond)
	dBack := enqueueLogin(t, c, clock, Request{Ticket: dPlace.ID, Arrival: dPlace.Arrival, Patient: true}, 4)

	var order []string
	prev := busy
	for _, w := range []struct {
		name string
		ch   <-chan result
	}{{"A", a}, {"B", b}, {"C", cBack}, {"D", dBack}, {"E", e}} {
		prev.Release()
		r := recv(t, w.ch)
		if r.err != nil {
			t.Fatalf("%s: %v (order so far %v)", w.name, r.err, order)
		}
		order = append(order, w.name)
		prev = r.p
	}
	prev.Release()
	st := c.Snapshot().Room
	if st.Issued != 2 || st.Redeemed != 2 || st.Away != 0 || st.Waiting != 0 {
		t.Fatalf("room stats = %+v, want 2 issued, 2 redeemed, nobody left", st)
	}
	if s := c.state.Load(); s != 0 {
		t.Fatalf("state = %#x, want 0", s)
	}
}

func TestTicketUsedTwiceAtOnceGoesToTheBack(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	setRate(c, clock, 5*time.Second)
	busy := mustAcquire(t, c, Login)
	clock.Advance(time.Millisecond)
	a := enqueueLogin(t, c, clock, Request{}, 0)
	clock.Advance(time.Millisecond)
	b := enqueueLogin(t, c, clock, Request{}, 1)
	clock.Advance(time.Millisecond)
	p := mustShedWithPlace(t, c, Request{})
	clock.Advance(time.Millisecond)
	held := enqueueLogin(t, c, clock, Request{Ticket: p.ID, Arrival: p.Arrival, Patient: true}, 2)

	// The same ticket again, while its holder waits: no place for it.
	clock.Advance(time.Millisecond)
	dup := mustShedWithPlace(t, c, Request{Ticket: p.ID, Arrival: p.Arrival})
	if dup.ID == p.ID || !dup.Arrival.After(p.Arrival) || dup.Position != 4 {
		t.Fatalf("duplicate ticket got %+v, want a new place at the back (position 4)", dup)
	}
	if st := c.Snapshot().Room; st.Rejected != 1 {
		t.Fatalf("rejected = %d, want 1", st.Rejected)
	}
	for _, ch := range []<-chan result{a, b, held} {
		busy.Release()
		r := recv(t, ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
		busy = r.p
	}
	busy.Release()

	// After it was used, the ticket buys nothing either.
	setRate(c, clock, 5*time.Second)
	busy = mustAcquire(t, c, Login)
	clock.Advance(time.Millisecond)
	x := enqueueLogin(t, c, clock, Request{}, 0)
	clock.Advance(time.Millisecond)
	again := enqueueLogin(t, c, clock, Request{Ticket: p.ID, Arrival: p.Arrival, Patient: true}, 1)
	busy.Release()
	r := recv(t, x)
	if r.err != nil {
		t.Fatalf("X, who arrived before the reused ticket was shown: %v", r.err)
	}
	r.p.Release()
	if r := recv(t, again); r.err != nil {
		t.Fatal(r.err)
	} else {
		r.p.Release()
	}
	if st := c.Snapshot().Room; st.Rejected != 2 {
		t.Fatalf("rejected = %d, want 2 (used twice at once, then used again)", st.Rejected)
	}
}

// A place is paid for with a login token when it is made, so a login
// back with it pays nothing, and renewing it is free; a new place when the
// bucket is empty is refused like a login.
func TestTicketSkipsLoginBucket(t *testing.T) {
	l := roomLimits()
	l.LoginRate = RateLimit{Rate: 0.001, Burst: 2}
	c, clock := newTest(t, l)
	setRate(c, clock, 5*time.Second)
	busy := mustAcquire(t, c, Login) // one token
	until := clock.Now().Add(time.Minute)
	p := mustKeep(t, c, "", 0, time.Time{}, until) // the other
	clock.Advance(time.Millisecond)
	if _, err := c.Acquire(context.Background(), Request{Lane: Login}); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("login without a token: %v, want rate limited", err)
	}
	var se *ShedError
	if _, err := c.Keep("", 0, time.Time{}, until); !errors.As(err, &se) || !errors.Is(err, ErrRateLimited) || se.RetryAfter < time.Second {
		t.Fatalf("a new place without a token: %v, want rate limited with a Retry-After", err)
	}
	if q := mustKeep(t, c, "", p.ID, p.Arrival, until); q.ID != p.ID || !q.Arrival.Equal(p.Arrival) {
		t.Fatalf("renewed place %+v, want %+v kept", q, p)
	}
	clock.Advance(time.Millisecond)
	ch := enqueueLogin(t, c, clock, Request{Ticket: p.ID, Arrival: p.Arrival}, 0)
	busy.Release()
	if r := recv(t, ch); r.err != nil {
		t.Fatalf("ticketed login: %v", r.err)
	} else {
		r.p.Release()
	}
}

// A login that paid its token and is sent away keeps the token in its
// place when it can come back with it (Request.Returns): its return pays
// nothing, and the token is not given back, or a login could pay, be
// refused, be refunded, and come back free, and the bucket would never
// count it. One that cannot come back gets its token back.
func TestLoginSentAwayKeepsItsToken(t *testing.T) {
	l := roomLimits()
	l.LoginRate = RateLimit{Rate: 0.001, Burst: 3}
	c, clock := newTest(t, l)
	setRate(c, clock, 20*time.Second) // position 1 waits 20 s, past the 12 s hold
	busy := mustAcquire(t, c, Login)  // 2 tokens left
	for range 3 {
		// Cannot come back: refunded each time.
		mustShedWithPlace(t, c, Request{})
	}
	p := mustShedWithPlace(t, c, Request{Returns: true}) // 1 left
	q := mustShedWithPlace(t, c, Request{Returns: true}) // none left
	if _, err := c.Acquire(context.Background(), Request{Lane: Login, Returns: true}); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("a third login that can come back: %v, want rate limited: the two sent away kept their tokens", err)
	}
	// Back with their places, again and again: free.
	for range 3 {
		for _, pl := range []*Place{p, q} {
			if again := mustShedWithPlace(t, c, Request{Ticket: pl.ID, Arrival: pl.Arrival, Returns: true}); again.ID != pl.ID {
				t.Fatalf("back with place %x: got place %x, want the same", pl.ID, again.ID)
			}
		}
	}
	busy.Release()
}

// A renewed place never outlives its first arrival by more than
// MaxPlaceAge, and a place that old gets a new one at the back.
func TestKeepBoundedByMaxPlaceAge(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	busy := mustAcquire(t, c, Login)
	defer busy.Release()
	setRate(c, clock, 5*time.Second)
	p := mustKeep(t, c, "", 0, time.Time{}, clock.Now().Add(time.Minute))
	for range 4 {
		clock.Advance(MaxPlaceAge / 4)
		setRate(c, clock, 5*time.Second)
		q := mustKeep(t, c, "", p.ID, p.Arrival, clock.Now().Add(time.Minute))
		if q.Until.After(p.Arrival.Add(MaxPlaceAge)) {
			t.Fatalf("renewed place lasts until %s, past its first arrival %s plus %s", q.Until, p.Arrival, MaxPlaceAge)
		}
	}
	clock.Advance(time.Second)
	if q := mustKeep(t, c, "", p.ID, p.Arrival, clock.Now().Add(time.Minute)); q.ID == p.ID || !q.Arrival.Equal(clock.Now()) {
		t.Fatalf("a place %s old renewed as %+v, want a new place at the back", MaxPlaceAge+time.Second, q)
	}
	if pos, _ := c.Line(p.ID, p.Arrival); pos != 2 {
		t.Fatalf("Line with the old ticket: position %d, want 2 (a new arrival behind the new place)", pos)
	}
}

func TestLineAndKeep(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	if c.LoginCongested() {
		t.Fatal("congested with nobody in line")
	}
	busy := mustAcquire(t, c, Login)
	defer busy.Abandon()
	setRate(c, clock, 2*time.Second)
	p1 := mustKeep(t, c, "", 0, time.Time{}, clock.Now().Add(time.Minute))
	clock.Advance(time.Millisecond)
	p2 := mustKeep(t, c, "", 0, time.Time{}, clock.Now().Add(time.Minute))
	if !c.LoginCongested() {
		t.Fatal("not congested with two places kept")
	}
	if pos, _ := c.Line(p1.ID, p1.Arrival); pos != 1 {
		t.Errorf("first place: position %d, want 1", pos)
	}
	if pos, wait := c.Line(p2.ID, p2.Arrival); pos != 2 || wait < 3*time.Second || wait > 5*time.Second {
		t.Errorf("second place: position %d wait %s, want 2 and about 4 s", pos, wait)
	}
	if pos, _ := c.Line(0, time.Time{}); pos != 3 {
		t.Errorf("a new arrival: position %d, want 3", pos)
	}
	// Places lapse.
	clock.Advance(time.Minute)
	if c.LoginCongested() {
		t.Fatal("lapsed places still count")
	}
	if pos, _ := c.Line(0, time.Time{}); pos != 1 {
		t.Errorf("after the places lapsed: position %d, want 1", pos)
	}
}

// A forged arrival from the future is treated as no ticket.
func TestFutureArrivalIgnored(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	p := mustKeep(t, c, "", 42, clock.Now().Add(time.Hour), clock.Now().Add(time.Minute))
	if !p.Arrival.Equal(clock.Now()) || p.ID == 42 {
		t.Fatalf("future arrival kept: %+v", p)
	}
}

// A used ticket, or one whose holder is in line, keeps no place of its own
// when shown again on the login page.
func TestKeepSpentTicketGetsNewPlace(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	setRate(c, clock, 5*time.Second)
	p := mustKeep(t, c, "", 0, time.Time{}, clock.Now().Add(time.Minute))
	clock.Advance(time.Millisecond)
	used, err := c.Acquire(context.Background(), Request{Lane: Login, Ticket: p.ID, Arrival: p.Arrival})
	if err != nil {
		t.Fatal(err)
	}
	used.Release()
	clock.Advance(time.Millisecond)
	again := mustKeep(t, c, "", p.ID, p.Arrival, clock.Now().Add(time.Minute))
	if again.ID == p.ID || !again.Arrival.After(p.Arrival) {
		t.Fatalf("Keep with a used ticket = %+v, want a new place at the back", again)
	}
	if st := c.Snapshot().Room; st.Away != 1 {
		t.Fatalf("away = %d, want only the new place", st.Away)
	}
}

// With a login slot free and nobody in line, a slow measured rate may only
// mean clients are away: the estimate is floored by the lane's capacity,
// so tickets do not send people away while the app idles. With the lane
// full, the measured rate stands.
func TestRateFlooredByCapacityWhenIdle(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	p := mustAcquire(t, c, Login)
	clock.Advance(500 * time.Millisecond)
	p.Release() // one login took 0.5 s: capacity 2/s with max 1
	setRate(c, clock, 5*time.Second)
	mustKeep(t, c, "", 0, time.Time{}, clock.Now().Add(time.Minute)) // someone away

	if _, wait := c.Line(0, time.Time{}); wait > 2*time.Second {
		t.Fatalf("slot free, nobody in line: wait %s for position 2, want about 1 s from capacity", wait)
	}
	busy := mustAcquire(t, c, Login)
	defer busy.Abandon()
	if _, wait := c.Line(0, time.Time{}); wait < 8*time.Second {
		t.Fatalf("lane full: wait %s for position 2, want about 10 s from the measured 0.2/s", wait)
	}
}

// A ticket holder who leaves the queue keeps its place, and counts as one
// decision, cancelled: every request is one decision, which is how an
// operator reconciles what was sent with what was done.
func TestTicketHolderLeavingCountsOnce(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	setRate(c, clock, 20*time.Second) // position 1 waits 20 s, past the 12 s hold
	busy := mustAcquire(t, c, Login)
	defer busy.Release()
	place := mustShedWithPlace(t, c, Request{})
	before := c.Snapshot().Lanes[Login].Decisions

	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan result, 1)
	go func() {
		p, err := c.Acquire(ctx, Request{Lane: Login, Ticket: place.ID, Arrival: place.Arrival, Patient: true})
		ch <- result{p, err}
	}()
	bctx, bcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer bcancel()
	if err := clock.BlockUntilContext(bctx, 1); err != nil {
		t.Fatalf("the returning login never queued: %v", err)
	}
	cancel()
	if r := recv(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("got %v, want the caller's cancellation", r.err)
	}
	after := c.Snapshot().Lanes[Login].Decisions
	var changed []string
	for d := range after {
		if n := after[d] - before[d]; n != 0 {
			changed = append(changed, fmt.Sprintf("%s+%d", Decision(d), n))
		}
	}
	if len(changed) != 1 || changed[0] != "cancelled+1" {
		t.Fatalf("decisions counted for one request: %v, want only cancelled+1", changed)
	}
	if st := c.Snapshot().Room; st.Away != 1 {
		t.Fatalf("room after the holder left: %+v, want its place kept (1 away)", st)
	}
}

// A used ticket is refused for as long as it could be shown: its
// redemption record outlives the place's expiry, up to the oldest a place
// may be, after which the ticket is refused for its age anyway.
func TestRedeemedTicketRefusedWhileUsable(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	setRate(c, clock, 20*time.Second) // position 1 waits 20 s, past the 12 s hold
	busy := mustAcquire(t, c, Login)
	p := mustShedWithPlace(t, c, Request{})
	if life := p.Until.Sub(clock.Now()); life < time.Minute {
		t.Fatalf("place %+v lasts %s, want more than a minute for this test", p, life)
	}
	busy.Release()
	// Its holder is back at once, and admitted: the ticket is used up.
	used, err := c.Acquire(context.Background(), Request{Lane: Login, Ticket: p.ID, Arrival: p.Arrival})
	if err != nil {
		t.Fatal(err)
	}
	used.Release()

	replay := func(when string) {
		t.Helper()
		busy := mustAcquire(t, c, Login)
		defer busy.Release()
		setRate(c, clock, 20*time.Second)
		before := c.Snapshot().Room.Rejected
		again := mustShedWithPlace(t, c, Request{Ticket: p.ID, Arrival: p.Arrival})
		if again.ID == p.ID || !again.Arrival.Equal(clock.Now()) {
			t.Errorf("%s: the used ticket got %+v, want a new place at the back", when, again)
		}
		if got := c.Snapshot().Room.Rejected; got != before+1 {
			t.Errorf("%s: rejected %d, want %d: the ticket was used", when, got, before+1)
		}
	}
	// Past the grace a redemption record used to last, still within the
	// ticket's expiry.
	clock.Advance(p.Until.Sub(clock.Now()) - time.Second)
	replay("just before the ticket expires")
	// However the ticket was renewed, it cannot rank anyone once its
	// first arrival is MaxPlaceAge old.
	clock.Advance(p.Arrival.Add(MaxPlaceAge).Sub(clock.Now()) - time.Second)
	replay("just before the place's age runs out")
}

// A ticket whose first arrival is older than MaxPlaceAge ranks nobody: its
// holder joins at the back.
func TestTicketTooOldGoesToTheBack(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	setRate(c, clock, 20*time.Second)
	busy := mustAcquire(t, c, Login)
	defer busy.Release()
	old := clock.Now()
	clock.Advance(MaxPlaceAge + time.Second)
	setRate(c, clock, 20*time.Second)
	p := mustShedWithPlace(t, c, Request{Ticket: 12345, Arrival: old})
	if p.ID == 12345 || !p.Arrival.Equal(clock.Now()) {
		t.Fatalf("a ticket first arrived %s ago got %+v, want a new place at the back", MaxPlaceAge+time.Second, p)
	}
}

// Waiting-page places beyond MaxPagePlacesPerClient from one address do
// not count ahead of others, but still rank their holders; places of
// logins sent away after posting are not capped.
func TestPagePlacesCappedPerClient(t *testing.T) {
	c, clock := newTest(t, roomLimits())
	setRate(c, clock, 20*time.Second) // position 1 waits 20 s, past the 12 s hold
	busy := mustAcquire(t, c, Login)
	r1 := mustShedWithPlace(t, c, Request{Client: "real"})
	until := clock.Now().Add(time.Hour)
	var last Place
	for i := range 10_000 {
		clock.Advance(time.Microsecond)
		last = mustKeep(t, c, "flood"+strconv.Itoa(i%4), 0, time.Time{}, until)
	}
	if st := c.Snapshot().Room; st.Away != 1+4*MaxPagePlacesPerClient {
		t.Fatalf("away after 10,000 page places from 4 clients: %d, want %d", st.Away, 1+4*MaxPagePlacesPerClient)
	}
	if pos, _ := c.Line(r1.ID, r1.Arrival); pos != 1 {
		t.Errorf("the real login's place after the flood: %d, want still 1", pos)
	}
	// Logins sent away after posting count, however many from one client.
	for range 2 * MaxPagePlacesPerClient {
		clock.Advance(time.Microsecond)
		mustShedWithPlace(t, c, Request{Client: "office"})
	}
	clock.Advance(time.Microsecond)
	r2 := mustShedWithPlace(t, c, Request{Client: "real"})
	if want := 1 + 4*MaxPagePlacesPerClient + 2*MaxPagePlacesPerClient + 1; r2.Position != want {
		t.Errorf("a real login after the flood and the office: position %d, want %d", r2.Position, want)
	}
	// The last page place was not counted, but its holder, back in line,
	// goes before the real login that arrived after it.
	clock.Advance(time.Microsecond)
	r2Back := enqueueLogin(t, c, clock, Request{Client: "real", Ticket: r2.ID, Arrival: r2.Arrival, Patient: true}, 0)
	clock.Advance(time.Microsecond)
	lastBack := enqueueLogin(t, c, clock, Request{Client: "flood3", Ticket: last.ID, Arrival: last.Arrival, Patient: true}, 1)
	busy.Release()
	r := recv(t, lastBack)
	if r.err != nil {
		t.Fatalf("the uncounted page place's holder: %v, want admitted first", r.err)
	}
	r.p.Release()
	if r := recv(t, r2Back); r.err != nil {
		t.Fatal(r.err)
	} else {
		r.p.Release()
	}
}

// A login sent away is never told a turn before one told to a login that
// arrived before it, however the estimate moved between: otherwise it
// comes back first and, nobody waiting for people away, is served first.
// A login that arrived earlier than the last promise keeps its own
// estimate: it is ahead.
func TestPromisedTurnsFollowArrival(t *testing.T) {
	r := newRoom()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// First arrival at t0, sent away at t0+1s while completions were
	// slow: 40 s.
	if got := r.promise(t0, t0.Add(time.Second), 40*time.Second); got != 40*time.Second {
		t.Fatalf("first promise: %s, want its estimate 40s", got)
	}
	// Arrived later, sent away 2 s after, once completions sped up: its
	// estimate of 10 s would bring it back 28 s before the first.
	if got := r.promise(t0.Add(500*time.Millisecond), t0.Add(3*time.Second), 10*time.Second); got != 38*time.Second {
		t.Errorf("later arrival: %s, want 38s, the first's turn", got)
	}
	// A later one whose own estimate is later still keeps it.
	if got := r.promise(t0.Add(time.Second), t0.Add(3*time.Second), 50*time.Second); got != 50*time.Second {
		t.Errorf("later arrival with a later estimate: %s, want its own 50s", got)
	}
	// A login that arrived before the last promise (back with a ticket)
	// is ahead: its own estimate, and it moves nothing.
	if got := r.promise(t0.Add(-time.Minute), t0.Add(3*time.Second), time.Second); got != time.Second {
		t.Errorf("earlier arrival: %s, want its own 1s", got)
	}
	if got := r.promise(t0.Add(2*time.Second), t0.Add(4*time.Second), time.Second); got != 49*time.Second {
		t.Errorf("after an earlier arrival's promise: %s, want 49s, the last later promise", got)
	}
	// Once the promised turn has passed, estimates stand as they are.
	if got := r.promise(t0.Add(3*time.Second), t0.Add(time.Minute), 5*time.Second); got != 5*time.Second {
		t.Errorf("after the last promised turn: %s, want its own 5s", got)
	}
}
