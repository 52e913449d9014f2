package fleet

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session/redistest"
)

// lineFleet is the fleet name of the line tests.
const lineFleet = "line"

// newTestLine returns member's view of fleet's line through client.
func newTestLine(t *testing.T, client redis.Scripter, fleet, member string, opts LineOptions) *Line {
	t.Helper()
	l, err := NewLine(client, fleet, member, opts)
	if err != nil {
		t.Fatalf("NewLine %s: %v", member, err)
	}
	return l
}

// runLine runs l's reports until the test ends, and waits for Run to
// return then.
func runLine(t *testing.T, l *Line) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// startLine is newTestLine with its reports running.
func startLine(t *testing.T, client redis.Scripter, fleet, member string, opts LineOptions) *Line {
	t.Helper()
	l := newTestLine(t, client, fleet, member, opts)
	runLine(t, l)
	return l
}

// reported waits until l has sent n reports in all, for at most a few
// seconds, and fails the test if any was lost.
func reported(t *testing.T, l *Line, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		st := l.Stats()
		if st.Dropped != 0 {
			t.Fatalf("reports lost: %+v", st)
		}
		if st.Reported >= n {
			if st.Reported > n {
				t.Fatalf("got %d reports sent, want %d", st.Reported, n)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reports sent after 5s, want %d", st.Reported, n)
		}
		<-tick.C
	}
}

// arrive ranks a login at l and fails the test on an error.
func arrive(t *testing.T, l *Line, id uint64, arrival time.Time) admission.Rank {
	t.Helper()
	r, err := l.Arrive(context.Background(), id, arrival)
	if err != nil {
		t.Fatalf("Arrive(%d, %v): %v", id, arrival, err)
	}
	return r
}

// redisNow is Redis's clock, the line's.
func redisNow(t *testing.T, client *redis.Client) time.Time {
	t.Helper()
	now, err := client.Time(context.Background()).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	return now
}

// sameRank fails the test unless got is want's place, with want's first
// arrival, and not fresh.
func sameRank(t *testing.T, what string, got, want admission.Rank) {
	t.Helper()
	if got.ID != want.ID || !got.Arrival.Equal(want.Arrival) || got.Fresh {
		t.Fatalf("%s: got place %d arrived %v, fresh %v; want the ticket's place %d arrived %v, not fresh",
			what, got.ID, got.Arrival, got.Fresh, want.ID, want.Arrival)
	}
}

// newPlace fails the test unless got is a new place at the back, not
// old's, with ahead places ahead of it.
func newPlace(t *testing.T, what string, got, old admission.Rank, ahead int) {
	t.Helper()
	if !got.Fresh || got.ID == old.ID || !got.Arrival.After(old.Arrival) || got.Ahead != ahead {
		t.Fatalf("%s: got place %d arrived %v, %d ahead, fresh %v; want a new place after %v with %d ahead",
			what, got.ID, got.Arrival, got.Ahead, got.Fresh, old.Arrival, ahead)
	}
}

// TestLineRanksNewArrivals checks that logins without a ticket, at any
// member, each take a new place at the back: fresh, ranked by Redis's
// clock in the order they arrived, with every earlier place ahead.
func TestLineRanksNewArrivals(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	a := newTestLine(t, client, lineFleet, "a", LineOptions{})
	b := newTestLine(t, client, lineFleet, "b", LineOptions{})

	before := redisNow(t, client)
	var last admission.Rank
	ids := map[uint64]bool{}
	for i, l := range []*Line{a, b, a, b, b, a} {
		r := arrive(t, l, 0, time.Time{})
		if !r.Fresh || r.Ahead != i || r.ID == 0 || ids[r.ID] {
			t.Fatalf("arrival %d: got %+v; want a fresh new place with %d ahead", i, r, i)
		}
		if !r.Arrival.After(last.Arrival) || r.Arrival.Before(before) {
			t.Fatalf("arrival %d: arrived %v, want after the last, %v, and Redis's %v", i, r.Arrival, last.Arrival, before)
		}
		ids[r.ID] = true
		last = r
	}
	if after := redisNow(t, client); last.Arrival.After(after) {
		t.Errorf("last arrival %v is later than Redis's clock after it, %v", last.Arrival, after)
	}
	// An arrival with a place but no first arrival is no ticket either.
	if r := arrive(t, a, last.ID, time.Time{}); !r.Fresh || r.ID == last.ID || r.Ahead != 6 {
		t.Errorf("a place without an arrival: got %+v; want a new place with 6 ahead", r)
	}
	if st := a.Stats(); st.Arrived != 4 || st.Failed != 0 {
		t.Errorf("a's stats: got %+v, want 4 arrived, none failed", st)
	}
}

// TestLineTicketNotTwiceAtOnce checks that a ticket whose place waits at
// one member is refused at another (a new place at the back instead), and
// that once the first member reports the login away with its place, the
// ticket ranks its holder at the other at its old place and first arrival,
// behind only the places that arrived before it.
func TestLineTicketNotTwiceAtOnce(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	a := startLine(t, client, lineFleet, "a", LineOptions{})
	b := startLine(t, client, lineFleet, "b", LineOptions{})

	first := arrive(t, a, 0, time.Time{})
	second := arrive(t, a, 0, time.Time{})
	// The first login's ticket presented at b while it waits at a.
	twice := arrive(t, b, first.ID, first.Arrival)
	newPlace(t, "the ticket at b while it waits at a", twice, second, 2)

	a.Away(first, time.Now().Add(time.Minute))
	reported(t, a, 1)
	back := arrive(t, b, first.ID, first.Arrival)
	sameRank(t, "the ticket at b once a sent it away", back, first)
	if back.Ahead != 0 {
		t.Errorf("the ticket at b: got %d ahead, want 0 (it arrived first)", back.Ahead)
	}
	// It waits at b now: refused at a, and a later login still counts it.
	again := arrive(t, a, first.ID, first.Arrival)
	newPlace(t, "the ticket at a while it waits at b", again, twice, 3)
	// A ticket of the second login, away, ranks behind the first.
	a.Away(second, time.Now().Add(time.Minute))
	reported(t, a, 2)
	if r := arrive(t, b, second.ID, second.Arrival); r.Ahead != 1 {
		t.Errorf("the second login's ticket: got %d ahead, want 1", r.Ahead)
	} else {
		sameRank(t, "the second login's ticket", r, second)
	}
}

// TestLineUsedTicketRefused checks that once a login is reported admitted,
// its ticket is refused at every member, the place no longer counts ahead
// of anyone, and a waiting-page report cannot bring it back.
func TestLineUsedTicketRefused(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	a := startLine(t, client, lineFleet, "a", LineOptions{})
	b := startLine(t, client, lineFleet, "b", LineOptions{})

	used := arrive(t, a, 0, time.Time{})
	if r := arrive(t, b, 0, time.Time{}); r.Ahead != 1 {
		t.Fatalf("before the report: got %d ahead, want 1", r.Ahead)
	}
	a.Used(used)
	reported(t, a, 1)
	for _, l := range []*Line{a, b} {
		r := arrive(t, l, used.ID, used.Arrival)
		if !r.Fresh || r.ID == used.ID {
			t.Fatalf("a used ticket at %s: got place %d, fresh %v; want a new place", l.member, r.ID, r.Fresh)
		}
	}
	// b's login and the two new places: the used one is not among them.
	if r := arrive(t, b, 0, time.Time{}); r.Ahead != 3 {
		t.Errorf("after the used place left: got %d ahead, want 3", r.Ahead)
	}
	b.Kept(admission.Place{ID: used.ID, Arrival: used.Arrival, Until: time.Now().Add(time.Minute)})
	reported(t, b, 1)
	if r := arrive(t, a, 0, time.Time{}); r.Ahead != 4 {
		t.Errorf("a waiting-page place for the used ticket: got %d ahead, want 4 (not counted)", r.Ahead)
	}
	if r := arrive(t, b, used.ID, used.Arrival); !r.Fresh {
		t.Errorf("a used ticket after the waiting-page report: got %+v, want a new place", r)
	}
}

// TestLineKeptPlaceCounts checks that a place kept for someone on a
// waiting page counts ahead of every later login, at every member, and
// that its ticket then ranks its holder at it.
func TestLineKeptPlaceCounts(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	a := startLine(t, client, lineFleet, "a", LineOptions{})
	b := newTestLine(t, client, lineFleet, "b", LineOptions{})

	page := admission.Place{ID: 12345, Arrival: redisNow(t, client).Add(-time.Second), Until: time.Now().Add(time.Minute)}
	if r := arrive(t, b, 0, time.Time{}); r.Ahead != 0 {
		t.Fatalf("before the page's place: got %d ahead, want 0", r.Ahead)
	}
	a.Kept(page)
	reported(t, a, 1)
	if r := arrive(t, b, 0, time.Time{}); r.Ahead != 2 {
		t.Errorf("after the page's place: got %d ahead, want 2 (the page's and the first login)", r.Ahead)
	}
	r := arrive(t, b, page.ID, page.Arrival)
	sameRank(t, "the page's ticket", r, admission.Rank{ID: page.ID, Arrival: page.Arrival})
	if r.Ahead != 0 {
		t.Errorf("the page's ticket: got %d ahead, want 0", r.Ahead)
	}
	// A page report for a place that waits at a member changes nothing.
	a.Kept(admission.Place{ID: page.ID, Arrival: page.Arrival.Add(-time.Minute), Until: time.Now().Add(time.Minute)})
	reported(t, a, 2)
	if r := arrive(t, b, 0, time.Time{}); r.Ahead != 3 {
		t.Errorf("after a page report for a waiting place: got %d ahead, want 3", r.Ahead)
	}
}

// TestLineDropLeaves checks that a login reported gone without a place
// leaves the line, so that later logins count one fewer ahead; and that a
// member cannot drop a place that waits at another.
func TestLineDropLeaves(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	a := startLine(t, client, lineFleet, "a", LineOptions{})
	b := startLine(t, client, lineFleet, "b", LineOptions{})

	first := arrive(t, a, 0, time.Time{})
	second := arrive(t, b, 0, time.Time{})
	if r := arrive(t, a, 0, time.Time{}); r.Ahead != 2 {
		t.Fatalf("before the drop: got %d ahead, want 2", r.Ahead)
	}
	a.Drop(first)
	reported(t, a, 1)
	if r := arrive(t, a, 0, time.Time{}); r.Ahead != 2 {
		t.Errorf("after the first dropped: got %d ahead, want 2 (the second and the third)", r.Ahead)
	}
	// a's report on b's login is not a's to make.
	a.Drop(second)
	reported(t, a, 2)
	if r := arrive(t, a, 0, time.Time{}); r.Ahead != 3 {
		t.Errorf("after a dropped b's login: got %d ahead, want 3 (b's still counts)", r.Ahead)
	}
	b.Drop(second)
	reported(t, b, 1)
	if r := arrive(t, a, 0, time.Time{}); r.Ahead != 3 {
		t.Errorf("after b dropped its login: got %d ahead, want 3 (of 4 after it left)", r.Ahead)
	}
}

// TestLinePlacesLapse checks that a place nobody reports on stops
// counting once it lapses: a login sent away keeping its place for a
// moment, after that moment; a login waiting at a member that died, after
// its hold and a grace, and then its ticket is good at another member.
func TestLinePlacesLapse(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	hold := 10 * time.Second
	a := startLine(t, client, lineFleet, "a", LineOptions{Hold: func() time.Duration { return hold }})
	b := newTestLine(t, client, lineFleet, "b", LineOptions{})

	// Sent away for 100ms, behind one kept a minute.
	kept := arrive(t, a, 0, time.Time{})
	brief := arrive(t, a, 0, time.Time{})
	sent := redisNow(t, client)
	keep := 100 * time.Millisecond
	a.Away(kept, time.Now().Add(time.Minute))
	a.Away(brief, time.Now().Add(keep))
	reported(t, a, 2)
	flushed := redisNow(t, client)
	keys := lineKeys(lineFleet)
	ctx := context.Background()
	check := arrive(t, b, 0, time.Time{})
	if check.Arrival.Before(sent.Add(keep / 2)) {
		if check.Ahead != 2 {
			t.Errorf("before the brief place lapsed: got %d ahead, want 2", check.Ahead)
		}
	} else {
		t.Logf("the check before the lapse came too late (%v after the report)", check.Arrival.Sub(sent))
	}
	// Redis's clock past the lapse, at the latest when the report was sent
	// plus what it kept.
	lapsed := flushed.Add(keep + time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for redisNow(t, client).Before(lapsed) {
		if time.Now().After(deadline) {
			t.Fatal("Redis's clock did not pass the lapse within 5s")
		}
		<-tick.C
	}
	if r := arrive(t, b, 0, time.Time{}); r.Ahead != 2 {
		t.Errorf("after the brief place lapsed: got %d ahead, want 2 (the one kept a minute, and b's check)", r.Ahead)
	}
	if _, err := client.ZScore(ctx, keys[0], u64(brief.ID)).Result(); err != redis.Nil {
		t.Errorf("the brief place after it lapsed: got %v, want it gone from the line", err)
	}

	// A login waiting at a, which dies: it lapses after its hold and a
	// grace. Its lapse is set from Redis's clock at its arrival.
	waiting := arrive(t, a, 0, time.Time{})
	at, err := client.ZScore(ctx, keys[3], u64(waiting.ID)).Result()
	if err != nil {
		t.Fatalf("the waiting place's lapse: %v", err)
	}
	lapse := time.UnixMicro(int64(at))
	if lapse.Before(waiting.Arrival.Add(hold)) || lapse.After(waiting.Arrival.Add(hold+2*time.Minute)) {
		t.Errorf("a waiting place lapses %v after its arrival, want its hold (%v) and a grace", lapse.Sub(waiting.Arrival), hold)
	}
	if r := arrive(t, b, waiting.ID, waiting.Arrival); !r.Fresh || r.Ahead != 4 {
		t.Fatalf("its ticket at b while it waits at a: got %+v, want a new place with 4 ahead", r)
	}
	// Its hold and grace pass: its lapse is made the past.
	past := float64(redisNow(t, client).Add(-time.Second).UnixMicro())
	if err := client.ZAdd(ctx, keys[3], redis.Z{Score: past, Member: u64(waiting.ID)}).Err(); err != nil {
		t.Fatalf("ZADD: %v", err)
	}
	if r := arrive(t, b, 0, time.Time{}); r.Ahead != 4 {
		t.Errorf("after the waiting place lapsed: got %d ahead, want 4 (one more arrival, one lapsed)", r.Ahead)
	}
	if _, err := client.ZScore(ctx, keys[1], u64(waiting.ID)).Result(); err != redis.Nil {
		t.Errorf("the lapsed place still waits (%v)", err)
	}
	if ok, err := client.HExists(ctx, keys[2], u64(waiting.ID)).Result(); err != nil || ok {
		t.Errorf("the lapsed place is still present at a member (%v, %v)", ok, err)
	}
	r := arrive(t, b, waiting.ID, waiting.Arrival)
	sameRank(t, "the lapsed place's ticket at b", r, waiting)
	if r.Ahead != 3 {
		t.Errorf("the lapsed place's ticket at b: got %d ahead, want 3", r.Ahead)
	}
}

// TestLineDown checks that Arrive does not touch Redis while Up says the
// fleet does not answer, and that with Redis hanging or down it fails
// within its timeout and counts the failure.
func TestLineDown(t *testing.T) {
	srv := redistest.Start(t)
	fp := redistest.NewFaultProxy(t, srv.Addr())
	client := newClient(t, fp.Addr())
	var up atomic.Bool
	timeout := 100 * time.Millisecond
	l := newTestLine(t, client, lineFleet, "a", LineOptions{Timeout: timeout, Up: up.Load})

	if _, err := l.Arrive(context.Background(), 0, time.Time{}); !errors.Is(err, ErrLineDown) {
		t.Fatalf("while down: got %v, want ErrLineDown", err)
	}
	if n := fp.Conns(); n != 0 {
		t.Fatalf("while down: %d connections to Redis, want none", n)
	}
	up.Store(true)
	arrive(t, l, 0, time.Time{})
	if n := fp.Conns(); n == 0 {
		t.Fatal("test: an arrival made no connection to Redis")
	}

	fail := func(what string) {
		t.Helper()
		before := l.Stats()
		start := time.Now()
		_, err := l.Arrive(context.Background(), 0, time.Time{})
		took := time.Since(start)
		if err == nil || errors.Is(err, ErrLineDown) {
			t.Fatalf("%s: got %v, want Redis's error", what, err)
		}
		if took > timeout+time.Second {
			t.Errorf("%s: failed after %s, want within the timeout %s", what, took, timeout)
		}
		if st := l.Stats(); st.Failed != before.Failed+1 || st.Arrived != before.Arrived {
			t.Errorf("%s: got stats %+v, then %+v; want one more failed", what, before, st)
		}
		t.Logf("%s: %v after %s", what, err, took)
	}
	fp.SetLatency(10*time.Second, 0)
	fail("hang")
	fp.Heal()
	srv.Stop()
	fail("down")
	if st := l.Stats(); st.Arrived != 1 || st.Failed != 2 {
		t.Errorf("got stats %+v, want 1 arrived, 2 failed", st)
	}
	// Reports that cannot be sent are counted lost.
	l.Used(admission.Rank{ID: 7, Arrival: time.Now()})
	runLine(t, l)
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for l.Stats().Dropped != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("a report to a stopped Redis: got stats %+v, want 1 dropped", l.Stats())
		}
		<-tick.C
	}
}

// TestLineTicketAge checks that a ticket ranks its holder only while its
// first arrival is at most MaxPlaceAge old and not more than a few seconds
// ahead of Redis's clock; otherwise the login takes a new place.
func TestLineTicketAge(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	a := newTestLine(t, client, lineFleet, "a", LineOptions{})
	for i, tc := range []struct {
		name string
		age  time.Duration // before Redis's clock now
		good bool
	}{
		{"older than MaxPlaceAge", admission.MaxPlaceAge + time.Minute, false},
		{"just within MaxPlaceAge", admission.MaxPlaceAge - time.Minute, true},
		{"a minute old", time.Minute, true},
		{"two seconds ahead", -2 * time.Second, true},
		{"ten seconds ahead", -10 * time.Second, false},
		{"an hour ahead", -time.Hour, false},
	} {
		id := uint64(1000 + i)
		arrival := redisNow(t, client).Add(-tc.age).Truncate(time.Microsecond)
		r := arrive(t, a, id, arrival)
		if tc.good {
			sameRank(t, tc.name, r, admission.Rank{ID: id, Arrival: arrival})
		} else if !r.Fresh || r.ID == id || r.Arrival.Equal(arrival) {
			t.Errorf("%s: got %+v; want a new place", tc.name, r)
		}
	}
}

// TestRunFlushesOnExit checks Run's promise: the reports queued when its
// context ends are sent before it returns, none lost.
func TestRunFlushesOnExit(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	l := newTestLine(t, client, lineFleet, "a", LineOptions{Timeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Run chooses between the queued report and the ended context at
	// random: enough rounds that each way is taken.
	const rounds = 20
	for i := range rounds {
		r := arrive(t, l, 0, time.Time{})
		l.Used(r)
		l.Run(ctx)
		if st := l.Stats(); st.Reported != uint64(i+1) || st.Dropped != 0 {
			t.Fatalf("round %d: Run returned with stats %+v; want %d reported, none dropped", i, st, i+1)
		}
	}
}

// u64 is a place id as Redis stores it.
func u64(id uint64) string { return strconv.FormatUint(id, 10) }
