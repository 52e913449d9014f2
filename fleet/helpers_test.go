package fleet

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session/redistest"
)

// TestMain fails the package's tests when a goroutine outlives them: the
// Redis clients' pools and the test servers' waiters must all end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Lane indices, short.
const (
	core   = int(admission.Core)
	login  = int(admission.Login)
	export = int(admission.Export)
)

// testLease is the lease of the scenario tests.
const testLease = 2 * time.Second

// t0 is when the fake clocks start: whole milliseconds, as a real fleet's
// script clock is.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// readmeLimits are the README's limits for a pool of 20: a budget of 16;
// login reserves 2 of at most 2, core 8 of at most 16, export none of at
// most 4.
func readmeLimits() Limits {
	var lim Limits
	lim.Budget = 16
	lim.Lane[login] = LaneLimits{Reserved: 2, Max: 2}
	lim.Lane[core] = LaneLimits{Reserved: 8, Max: 16}
	lim.Lane[export] = LaneLimits{Reserved: 0, Max: 4}
	return lim
}

// newClient is a client of addr that lets a context's deadline bound
// each call and never retries, as lanegate's are; closed when t ends.
func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialTimeout:           time.Second,
		ReadTimeout:           5 * time.Second,
		WriteTimeout:          5 * time.Second,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// fixture is one fleet on a private Redis, timed by a fake clock.
type fixture struct {
	t      *testing.T
	srv    *redistest.Server
	client *redis.Client
	clock  *clockwork.FakeClock
	leases *Leases
	lim    Limits
}

// newFixture starts a Redis and a fleet on it with ClockTime leases of
// testLease and the README's limits.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	clock := clockwork.NewFakeClockAt(t0)
	l, err := NewLeases(client, "test", testLease, clock, ClockTime())
	if err != nil {
		t.Fatalf("NewLeases: %v", err)
	}
	return &fixture{t: t, srv: srv, client: client, clock: clock, leases: l, lim: readmeLimits()}
}

// renew renews member with demand d and fails the test on an error.
func (f *fixture) renew(member string, d Demand) Grant {
	f.t.Helper()
	g, err := f.leases.Renew(context.Background(), member, f.lim, d, Pace{})
	if err != nil {
		f.t.Fatalf("Renew %s: %v", member, err)
	}
	f.check()
	return g
}

// warm lets a new fleet's learning period pass: each member renews once,
// granted nothing, and the clock passes a lease, so that they start from
// nothing with the fleet's epoch in the past.
func (f *fixture) warm(members ...string) {
	f.t.Helper()
	for _, m := range members {
		if g := f.renew(m, Demand{}); g.Budget != 0 || !g.Learning {
			f.t.Fatalf("%s on a new fleet: got budget %d, learning %v; want 0, true", m, g.Budget, g.Learning)
		}
	}
	f.clock.Advance(testLease)
}

// state reads the fleet's hash at the fake clock's now.
func (f *fixture) state() state {
	f.t.Helper()
	return readState(f.t, f.leases, f.client)
}

// check fails the test when the stored state breaks the invariant.
func (f *fixture) check() {
	f.t.Helper()
	if err := invariant(f.state(), f.lim); err != nil {
		f.t.Fatal(err)
	}
}

// readState reads l's hash through client at l's clock.
func readState(t testing.TB, l *Leases, client redis.Scripter) state {
	t.Helper()
	res, err := l.read.Run(context.Background(), client, []string{l.key}, strconv.FormatInt(l.clock.Now().UnixMilli(), 10)).Slice()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	st, err := parseState(res)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return st
}

// sums are what the live entries of a state hold: per lane (H), in total
// (A), and with each lane counted at least at its reservation (Q).
type sums struct {
	H    [lanes]int
	A, Q int
}

// holdings sums the holdings of st's entries live at st.now.
func holdings(st state, lim Limits) sums {
	var s sums
	for _, e := range st.entries {
		if e.expires <= st.now {
			continue
		}
		for l := range lanes {
			s.H[l] += e.holding(l)
		}
	}
	s.total(lim)
	return s
}

// total sets A and Q from H.
func (s *sums) total(lim Limits) {
	s.A, s.Q = 0, 0
	for l := range lanes {
		s.A += s.H[l]
		s.Q += max(s.H[l], lim.Lane[l].Reserved)
	}
}

// within reports how s breaks lim, or nil.
func (s sums) within(lim Limits) error {
	if s.A > lim.Budget {
		return fmt.Errorf("members hold %d in all (%v), more than the budget %d", s.A, s.H, lim.Budget)
	}
	if s.Q > lim.Budget {
		return fmt.Errorf("members hold %v: with the reservations kept, %d, more than the budget %d", s.H, s.Q, lim.Budget)
	}
	for _, l := range admission.Lanes() {
		if s.H[l] > lim.Lane[l].Max {
			return fmt.Errorf("members hold %d of %s, more than its max %d", s.H[l], l, lim.Lane[l].Max)
		}
	}
	return nil
}

// invariant checks a stored state against lim: every holding within the
// limits, every grant's reservation within it.
func invariant(st state, lim Limits) error {
	for _, e := range st.entries {
		for _, l := range admission.Lanes() {
			if e.reserved[l] < 0 || e.reserved[l] > e.granted[l] || e.granted[l] < 0 {
				return fmt.Errorf("member %s, %s: granted %d, reserved %d", e.id, l, e.granted[l], e.reserved[l])
			}
		}
	}
	return holdings(st, lim).within(lim)
}

// queued returns a Demand with queued requests per lane (core, login, export
// as named) and nothing in flight.
func queued(coreQ, loginQ, exportQ int) Demand {
	var d Demand
	d[core].Queued, d[login].Queued, d[export].Queued = coreQ, loginQ, exportQ
	return d
}

// lanesOf returns a grant's maxima as core, login, export.
func lanesOf(g Grant) [3]int {
	return [3]int{g.Lane[core].Max, g.Lane[login].Max, g.Lane[export].Max}
}
