package poolwatch

import (
	"math/rand/v2"
	"testing"
	"time"
)

// pool is a scripted PgBouncer pool in session mode: the others' clients
// hold their connections first (they had them before the burst), and
// lanegate's requests at the database take what is left and wait for the
// rest.
type pool struct {
	size int
}

// read is what SHOW POOLS says when the others hold others connections and
// atDB of lanegate's requests are at the database.
func (p pool) read(others, atDB int) Pool {
	want := others + atDB
	return Pool{Size: p.size, SvActive: min(want, p.size), ClWaiting: max(want-p.size, 0)}
}

// storm drives the law through a schedule of the others' holding, with
// lanegate under a demand that always fills its budget. Each poll, half of
// lanegate's requests finish (a request lasts about two polls), the budget
// is filled again, and each request in flight is at the database with
// probability atDB (between queries otherwise): the law never sees exact
// figures.
type storm struct {
	t        *testing.T
	law      law
	pool     pool
	poll     time.Duration
	rng      *rand.Rand
	atDB     float64
	now      time.Time
	budget   int
	inFlight int
	// waitedByLanegate counts polls at which one of lanegate's requests
	// waited in PgBouncer.
	waitedByLanegate int
}

func newStorm(t *testing.T, size, static int, atDB float64) *storm {
	return &storm{
		t:      t,
		law:    law{static: static, window: time.Second},
		pool:   pool{size: size},
		poll:   250 * time.Millisecond,
		rng:    rand.New(rand.NewPCG(1, 2)),
		atDB:   atDB,
		now:    time.Unix(1_700_000_000, 0),
		budget: static,
	}
}

// step runs one poll with the others holding others connections and
// returns the budget the law chose.
func (s *storm) step(others int) int {
	s.now = s.now.Add(s.poll)
	s.inFlight -= s.inFlight / 2
	// Demand always fills the budget; above it, requests admitted
	// before it shrank drain.
	s.inFlight = max(s.inFlight, s.budget)
	at := 0
	for range s.inFlight {
		if s.rng.Float64() < s.atDB {
			at++
		}
	}
	if others+at > s.pool.size && at > 0 && others < s.pool.size {
		s.waitedByLanegate++
	}
	s.budget, _ = s.law.next(s.now, s.pool.read(others, at), s.inFlight)
	return s.budget
}

// The measurement: a pool of 16, lanegate sized 13 (20 % headroom),
// and a background job holding 14 connections for 20 s out of every 40 s.
func TestLawFollowsABurstWithoutOscillating(t *testing.T) {
	const size, static, hog = 16, 13, 14
	s := newStorm(t, size, static, 0.8)
	var during, after []int
	var truth []int // the others' holding over the last window
	for cycle := range 3 {
		for i := range 160 { // 40 s of 250 ms polls
			others := 0
			if i < 80 {
				others = hog
			}
			b := s.step(others)
			if b < 0 || b > static {
				t.Fatalf("cycle %d poll %d: budget %d outside [0, %d]", cycle, i, b, static)
			}
			// Never below what the pool really had free all through
			// the window: the law does not starve lanegate.
			truth = append(truth, others)
			if len(truth) > 5 {
				truth = truth[1:]
			}
			if _, held := minMax(truth); b < min(size-held, static) {
				t.Fatalf("cycle %d poll %d: budget %d below the %d connections free for the whole window", cycle, i, b, size-held)
			}
			switch {
			case i >= 8 && i < 80: // the burst, after two seconds
				during = append(during, b)
			case i >= 88: // the quiet half, after two seconds
				after = append(after, b)
			}
		}
	}
	// The band: the budget may exceed the truly free connections only by
	// lanegate's requests the estimate saw between queries; with two free
	// connections and the window's largest estimate, by one at most.
	lo, hi := minMax(during)
	if lo < size-hog || hi > size-hog+1 {
		t.Errorf("budget during the bursts in [%d, %d], want within [%d, %d]", lo, hi, size-hog, size-hog+1)
	}
	if lo, hi := minMax(after); lo != static || hi != static {
		t.Errorf("budget between the bursts in [%d, %d], want %d throughout", lo, hi, static)
	}
	// Changes of direction within a burst, beyond the band, would be
	// oscillation; inside it, say how often it moved.
	// The first poll of each burst is unavoidable: those requests were
	// admitted before it began.
	if s.waitedByLanegate > 3*160/20 {
		t.Errorf("lanegate's requests waited in PgBouncer at %d of %d polls", s.waitedByLanegate, 3*160)
	}
	if n := reversals(during); n > len(during)/4 {
		t.Errorf("budget reversed direction %d times in %d polls of bursts", n, len(during))
	}
	t.Logf("bursts: budget in [%d, %d], %d reversals in %d polls; lanegate's requests waited in PgBouncer at %d of %d polls",
		lo, hi, reversals(during), len(during), s.waitedByLanegate, 3*160)
}

// Going down takes one poll; coming back takes the window (one second)
// and one poll, not more.
func TestLawRecoveryTimes(t *testing.T) {
	s := newStorm(t, 8, 8, 1)
	for range 8 {
		s.step(0)
	}
	if got := s.step(6); got != 2 {
		t.Fatalf("first poll of the burst: budget %d, want 2", got)
	}
	for range 20 {
		s.step(6)
	}
	polls := 0
	for s.step(0) != 8 {
		polls++
		if polls > 100 {
			t.Fatal("budget never recovered")
		}
	}
	if window := int(s.law.window / s.poll); polls > window+1 {
		t.Errorf("recovered after %d polls, want at most %d (the window and one)", polls+1, window+1)
	}
}

// The floor: when the others hold the whole pool, lanegate admits nothing
// (its requests would only wait in PgBouncer), and takes the first
// connection they free at the next poll.
func TestLawFloorIsZeroAndNotSticky(t *testing.T) {
	s := newStorm(t, 8, 8, 1)
	for range 12 {
		if got := s.step(8); got != 0 && s.inFlight == 0 {
			t.Fatalf("budget %d while the others hold the whole pool", got)
		}
	}
	if got := s.step(8); got != 0 {
		t.Fatalf("budget %d while the others hold the whole pool", got)
	}
	// One connection freed: lanegate's share at once, as a decrease
	// from its own point of view is not needed.
	for range 5 {
		s.step(7)
	}
	if got := s.step(7); got != 1 {
		t.Fatalf("budget %d after the others freed one connection, want 1", got)
	}
}

// Lanegate's own load never shrinks its budget: the estimate of the
// others cancels it out, whether its requests hold or wait.
func TestLawIgnoresLanegatesOwnLoad(t *testing.T) {
	l := law{static: 8, window: time.Second}
	now := time.Unix(0, 0)
	for inFlight := 0; inFlight <= 20; inFlight++ {
		// All of lanegate's requests at the database: 8 hold, the rest wait.
		p := pool{size: 8}.read(0, inFlight)
		now = now.Add(250 * time.Millisecond)
		if b, held := l.next(now, p, inFlight); b != 8 || held != 0 {
			t.Fatalf("%d in flight: budget %d, others %d; want 8, 0", inFlight, b, held)
		}
	}
}

func minMax(xs []int) (lo, hi int) {
	lo, hi = xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func reversals(xs []int) int {
	n, dir := 0, 0
	for i := 1; i < len(xs); i++ {
		d := xs[i] - xs[i-1]
		if d == 0 {
			continue
		}
		if d > 0 && dir < 0 || d < 0 && dir > 0 {
			n++
		}
		if d > 0 {
			dir = 1
		} else {
			dir = -1
		}
	}
	return n
}
