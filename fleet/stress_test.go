package fleet

import (
	"context"
	"fmt"
	"math/rand"
	"strconv"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session/redistest"
)

// stressLease is the lease of the stress test's fleets. Members renew
// every stressLease/8 to stressLease/3, each on its own schedule.
const stressLease = time.Second

// TestStress runs fleets of 2 to 12 simulated members against the real
// script: members join, die, leave, and renew in random order; their
// demand changes, with storms; they admit requests under their grants and
// the requests complete at random, so in flight stays above a shrunk grant
// for a while. Redis loses the fleet now and then. After every renewal the
// stored state must keep the invariant, the grant returned must be the one
// stored, and what the live members may really have in flight (their
// grants and their in flight) must fit the limits too.
//
// The disruptive runs also change the fleet's limits and stall members past
// their lease (they come back late, with requests in flight the fleet
// stopped counting), and Redis goes back to a state a few renewals old, as
// after a failover that lost writes. Then the invariant may break through
// no grant's
// fault; a renewal must never make it worse, and once the fleet is quiet
// again it must hold.
//
// At the end of every run the fleet goes quiet until everyone has drained,
// and then the whole core lane must be handed out, at least a slot to each.
func TestStress(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr())
	steps := 2500
	if testing.Short() {
		steps = 500
	}
	for _, tc := range []struct {
		seed    int64
		disrupt bool
		// keep is KeepFallback's: lost members count a while as ghosts.
		keep time.Duration
	}{
		{1, false, 0}, {2, false, 0}, {3, false, 0},
		{4, true, 0}, {5, true, 0}, {6, true, 0},
		{7, false, 3 * stressLease}, {8, true, 3 * stressLease},
	} {
		name := fmt.Sprintf("seed=%d", tc.seed)
		if tc.disrupt {
			name += ",disrupt"
		}
		if tc.keep > 0 {
			name += ",ghosts"
		}
		t.Run(name, func(t *testing.T) {
			s := newSim(t, client, tc.seed, tc.disrupt, tc.keep)
			for i := range steps {
				s.step(i, false)
			}
			s.quiesce()
			t.Logf("%+v", s.stats)
			s.stats.require(t, tc.disrupt)
		})
	}
}

// simMember is one simulated lanegate.
type simMember struct {
	id       string
	dead     bool      // crashed or left: no more renewals, nothing in flight
	stalled  bool      // stopped renewing until due
	due      time.Time // its next renewal
	inflight [lanes]int
	waiting  [lanes]int
	load     [lanes]int // at most this many arrivals per step
	grant    Grant
	gen      int // the fleet's loss count at its last renewal
}

// sim is a fleet of simulated members on one fleet key.
type sim struct {
	t       *testing.T
	rng     *rand.Rand
	clock   *clockwork.FakeClock
	leases  *Leases
	client  *redis.Client
	lim     Limits
	disrupt bool
	keep    time.Duration // lost members' ghosts last this long
	most    int           // members alive at most
	members []*simMember
	joined  int
	prev    state     // the stored state after the last renewal
	history []state   // the last few of them, oldest first
	losses  int       // times Redis lost the fleet or went back in time
	lost    time.Time // when it last did (or the run began)
	stats   simStats
	held    float64 // the sum of the shares behind stats.Held
}

// simStats count what a run exercised.
type simStats struct {
	Renewals, Joins, Deaths, Leaves, Stalls, Late, Losses, Stale, LimitChanges int
	Learning, Relaxed, Storms                                                  int
	// Held is the mean share of the budget the live members held after
	// a renewal, in percent: that the fleet is safe by handing out
	// capacity, not by refusing it.
	Held int
}

// require fails the test when a run did not exercise what it is for.
func (st simStats) require(t *testing.T, disrupt bool) {
	t.Helper()
	want := map[string]int{"joins": st.Joins, "deaths": st.Deaths, "losses": st.Losses, "storms": st.Storms, "learning renewals": st.Learning}
	if disrupt {
		want["late renewals"], want["limit changes"], want["stale restores"] = st.Late, st.LimitChanges, st.Stale
	}
	for what, n := range want {
		if n == 0 {
			t.Errorf("the run had no %s", what)
		}
	}
}

func newSim(t *testing.T, client *redis.Client, seed int64, disrupt bool, keep time.Duration) *sim {
	clock := clockwork.NewFakeClockAt(t0)
	l, err := NewLeases(client, "stress-"+strconv.FormatInt(seed, 10), stressLease, clock, ClockTime(), KeepFallback(keep))
	if err != nil {
		t.Fatalf("NewLeases: %v", err)
	}
	rng := rand.New(rand.NewSource(seed))
	s := &sim{t: t, rng: rng, clock: clock, leases: l, client: client, disrupt: disrupt, lost: clock.Now(), keep: keep}
	s.most = 2 + rng.Intn(11)
	s.lim = readmeLimits()
	if seed%2 == 0 {
		s.lim = s.randomLimits()
	}
	for range s.most {
		s.join()
	}
	return s
}

// randomLimits returns valid limits with a budget of 4 to 40.
func (s *sim) randomLimits() Limits {
	for {
		var lim Limits
		lim.Budget = 4 + s.rng.Intn(37)
		for l := range lanes {
			m := s.rng.Intn(lim.Budget + 1)
			if l == login {
				m = 1 + s.rng.Intn(4)
			}
			lim.Lane[l] = LaneLimits{Max: m, Reserved: s.rng.Intn(m/2 + 1)}
		}
		if lim.Validate() == nil {
			return lim
		}
	}
}

// join adds a member that renews at once.
func (s *sim) join() {
	s.joined++
	m := &simMember{id: fmt.Sprintf("m%02d", s.joined), due: s.clock.Now()}
	s.members = append(s.members, m)
	s.stats.Joins++
}

// alive returns the members that have not died or left.
func (s *sim) alive() []*simMember {
	var out []*simMember
	for _, m := range s.members {
		if !m.dead {
			out = append(out, m)
		}
	}
	return out
}

// step moves the clock to the next member's renewal, lets requests arrive
// and complete, perhaps disrupts the fleet, and renews that member.
func (s *sim) step(i int, quiet bool) {
	var m *simMember
	for _, c := range s.alive() {
		if m == nil || c.due.Before(m.due) {
			m = c
		}
	}
	if d := m.due.Sub(s.clock.Now()); d > 0 {
		s.clock.Advance(d)
	}
	s.evolve(quiet)
	if !quiet && s.disturb(i, m) {
		s.physical()
		return
	}
	s.renew(m)
}

// evolve lets each live member's requests complete at random and admits
// waiting ones under its grant, and no further: after its lease, nothing.
func (s *sim) evolve(quiet bool) {
	now := s.clock.Now()
	for _, m := range s.alive() {
		for l := range lanes {
			for range m.inflight[l] {
				if s.rng.Intn(10) < 4 {
					m.inflight[l]--
				}
			}
			if !quiet {
				m.waiting[l] += s.rng.Intn(m.load[l] + 1)
			}
			m.waiting[l] -= s.rng.Intn(m.waiting[l]/4 + 1) // timeouts
			if quiet {
				m.waiting[l] = 0
			}
			limit := 0
			if m.grant.Valid(now) {
				limit = m.grant.Lane[l].Max
			}
			admit := min(m.waiting[l], max(0, limit-m.inflight[l]))
			m.inflight[l] += admit
			m.waiting[l] = min(m.waiting[l]-admit, 500)
		}
	}
}

// disturb applies this step's random events, some of them forced at fixed
// steps so that every run has them. It reports whether m may not renew now.
func (s *sim) disturb(i int, m *simMember) bool {
	now := s.clock.Now()
	alive := s.alive()
	if len(alive) < s.most && (len(alive) < 2 || s.rng.Intn(50) == 0) {
		s.join()
	}
	if s.rng.Intn(12) == 0 {
		c := alive[s.rng.Intn(len(alive))]
		if s.rng.Intn(5) == 0 {
			// A storm on one lane of one member.
			c.load = [lanes]int{}
			c.load[s.rng.Intn(lanes)] = 20 + s.rng.Intn(40)
			s.stats.Storms++
		} else {
			for l := range lanes {
				c.load[l] = s.rng.Intn(3)
			}
		}
	}
	if len(alive) > 1 && (s.rng.Intn(100) == 0 || i == 700) {
		c := alive[s.rng.Intn(len(alive))]
		c.dead, c.inflight = true, [lanes]int{}
		s.stats.Deaths++
	}
	if len(alive) > 1 && s.rng.Intn(200) == 0 {
		c := alive[s.rng.Intn(len(alive))]
		if c.inflight == [lanes]int{} && !c.dead {
			if err := s.leases.Leave(context.Background(), c.id); err != nil {
				s.t.Fatalf("Leave %s: %v", c.id, err)
			}
			c.dead = true
			s.stats.Leaves++
			s.prev = s.read()
		}
	}
	if s.rng.Intn(500) == 0 || i == 1000 {
		if err := s.client.Del(context.Background(), s.leases.key).Err(); err != nil {
			s.t.Fatalf("DEL: %v", err)
		}
		s.prev = state{}
		s.losses++
		s.lost = now
		s.stats.Losses++
	}
	if !s.disrupt {
		return m.dead
	}
	if len(s.history) > 1 && (s.rng.Intn(500) == 0 || i == 1200) {
		s.restore(s.history[s.rng.Intn(len(s.history)-1)])
	}
	if s.rng.Intn(250) == 0 || i == 1500 {
		s.lim = s.randomLimits()
		s.stats.LimitChanges++
	}
	if s.rng.Intn(100) == 0 || i == 500 {
		c := alive[s.rng.Intn(len(alive))]
		if !c.dead && !c.stalled {
			c.stalled = true
			c.due = now.Add(stressLease/2 + time.Duration(s.rng.Int63n(int64(5*stressLease/2))))
			s.stats.Stalls++
		}
	}
	return m.dead || (m.stalled && now.Before(m.due))
}

// renew renews m and checks the fleet.
func (s *sim) renew(m *simMember) {
	t := s.t
	now := s.clock.Now()
	if m.stalled {
		m.stalled = false
		if m.gen == s.losses && !m.grant.Expires.IsZero() && !m.grant.Valid(now) {
			s.stats.Late++
		}
	}
	var d Demand
	for l := range lanes {
		d[l] = LaneDemand{InFlight: m.inflight[l], Queued: m.waiting[l]}
	}
	pre := s.pre(m, d, now)

	g, err := s.leases.Renew(context.Background(), m.id, s.lim, d, Pace{})
	if err != nil {
		t.Fatalf("Renew %s: %v", m.id, err)
	}
	s.stats.Renewals++
	if g.Learning {
		s.stats.Learning++
		// Learning lasts a lease from the last member that came back
		// holding more than the fleet knew, all within a renewal period
		// of the loss.
		if end := s.lost.Add(stressLease + stressLease/3); !now.Before(end) {
			t.Fatalf("%s: learning at %s, %s after the fleet was last lost", m.id, now.Sub(t0), now.Sub(s.lost))
		}
	}
	m.grant, m.gen = g, s.losses
	m.due = now.Add(stressLease/8 + time.Duration(s.rng.Int63n(int64(stressLease/3-stressLease/8))))

	post := s.read()
	s.checkGrant(m, d, g, post)
	s.checkStored(pre, post)
	s.held += float64(holdings(post, s.lim).A) / float64(s.lim.Budget)
	s.stats.Held = int(100 * s.held / float64(s.stats.Renewals))
	s.prev = post
	s.physical()
	s.history = append(s.history, post)
	if len(s.history) > 5 {
		s.history = s.history[1:]
	}
}

// restore puts an older state of the fleet back, as a Redis that failed
// over to a replica that had not received the last renewals would.
func (s *sim) restore(old state) {
	ctx := context.Background()
	key := s.leases.key
	if err := s.client.Del(ctx, key).Err(); err != nil {
		s.t.Fatalf("DEL: %v", err)
	}
	vals := []any{"epoch", strconv.FormatInt(old.epoch, 10)}
	for _, e := range old.entries {
		vals = append(vals, memberPrefix+e.id, encodeTestEntry(e))
	}
	if err := s.client.HSet(ctx, key, vals...).Err(); err != nil {
		s.t.Fatalf("HSET: %v", err)
	}
	if err := s.client.PExpire(ctx, key, 10*stressLease).Err(); err != nil {
		s.t.Fatalf("PEXPIRE: %v", err)
	}
	s.prev = old
	s.losses++
	s.lost = s.clock.Now()
	s.stats.Stale++
}

// pre is what the live members held before m's renewal, as the last
// stored state says, with m's in flight as it reports it now.
func (s *sim) pre(m *simMember, d Demand, now time.Time) sums {
	var out sums
	nowMs := now.UnixMilli()
	for _, e := range s.prev.entries {
		if e.expires <= nowMs {
			continue
		}
		for l := range lanes {
			if e.id == m.id {
				out.H[l] += max(e.granted[l], d[l].InFlight)
			} else {
				out.H[l] += e.holding(l)
			}
		}
	}
	if !s.has(s.prev, m.id, nowMs) {
		for l := range lanes {
			out.H[l] += d[l].InFlight
		}
	}
	out.total(s.lim)
	return out
}

// has reports whether st holds a lease of id live at now.
func (s *sim) has(st state, id string, now int64) bool {
	for _, e := range st.entries {
		if e.id == id && e.expires > now {
			return true
		}
	}
	return false
}

func (s *sim) read() state { return readState(s.t, s.leases, s.client) }

// checkGrant checks m's grant against what is stored, and that the stored
// members are exactly those whose leases run.
func (s *sim) checkGrant(m *simMember, d Demand, g Grant, post state) {
	t := s.t
	now := s.clock.Now()
	// The script's clock counts whole milliseconds.
	if want := now.Truncate(time.Millisecond).Add(stressLease); !g.Expires.Equal(want) {
		t.Fatalf("%s: expires %v, want %v", m.id, g.Expires, want)
	}
	if g.Members != len(post.entries) {
		t.Fatalf("%s: got %d members, stored %d", m.id, g.Members, len(post.entries))
	}
	budget := 0
	for _, l := range admission.Lanes() {
		if g.Lane[l].Reserved < 0 || g.Lane[l].Reserved > g.Lane[l].Max {
			t.Fatalf("%s, %s: granted %d, reserved %d", m.id, l, g.Lane[l].Max, g.Lane[l].Reserved)
		}
		budget += g.Lane[l].Max
	}
	if g.Budget != budget {
		t.Fatalf("%s: budget %d, lanes sum to %d", m.id, g.Budget, budget)
	}
	stored := map[string]entry{}
	for _, e := range post.entries {
		if e.expires+s.keep.Milliseconds() <= post.now {
			t.Fatalf("%s's renewal left %s's expired lease", m.id, e.id)
		}
		stored[e.id] = e
	}
	e, ok := stored[m.id]
	if !ok {
		t.Fatalf("%s: no lease stored", m.id)
	}
	for l := range lanes {
		if e.granted[l] != g.Lane[l].Max || e.reserved[l] != g.Lane[l].Reserved || e.inflight[l] != d[l].InFlight || e.queued[l] != d[l].Queued {
			t.Fatalf("%s, lane %d: stored %+v, returned %+v for demand %+v", m.id, l, e, g.Lane[l], d[l])
		}
	}
	for _, c := range s.members {
		if c.gen != s.losses {
			continue // not renewed since Redis lost it: it may or may not be there
		}
		e, has := stored[c.id]
		want := c.grant.Valid(now) && !(c.dead && c.inflight == [lanes]int{} && s.left(c))
		if has && !want && e.expires <= post.now && e.expires+s.keep.Milliseconds() > post.now {
			continue // lost lately: a ghost, kept for its fallback share
		}
		if has != want {
			t.Fatalf("%s's renewal: %s stored %v, want %v (dead %v, grant valid %v)", m.id, c.id, has, want, c.dead, c.grant.Valid(now))
		}
	}
}

// left reports whether c left rather than died: its lease was removed.
// Dead members' leases stay until they expire.
func (s *sim) left(c *simMember) bool {
	return !s.has(s.prev, c.id, s.clock.Now().UnixMilli())
}

// checkStored checks the invariant on the stored state: strictly in the
// clean runs; in the disruptive ones, no renewal may make it worse.
func (s *sim) checkStored(pre sums, post state) {
	t := s.t
	after := holdings(post, s.lim)
	if err := invariant(post, s.lim); err == nil {
		return
	} else if !s.disrupt {
		t.Fatalf("renewal %d: %v", s.stats.Renewals, err)
	}
	s.stats.Relaxed++
	if pre.within(s.lim) == nil {
		t.Fatalf("renewal %d broke the invariant: before %+v, after %+v (limits %+v)", s.stats.Renewals, pre, after, s.lim)
	}
	worse := after.A > max(s.lim.Budget, pre.A) || after.Q > max(s.lim.Budget, pre.Q)
	for l := range lanes {
		worse = worse || after.H[l] > max(s.lim.Lane[l].Max, pre.H[l])
	}
	if worse {
		t.Fatalf("renewal %d made it worse: before %+v, after %+v (limits %+v)", s.stats.Renewals, pre, after, s.lim)
	}
}

// physical checks what the members may really have at the app until they
// next renew, by their own grants and in flight: each stored lease covers
// its member's in flight (once it renewed since Redis last lost writes),
// and, in the clean runs, all of it fits the limits (across Redis losing
// the fleet too).
func (s *sim) physical() {
	t := s.t
	now := s.clock.Now()
	var p sums
	for _, m := range s.alive() {
		for l := range lanes {
			g := 0
			if m.grant.Valid(now) {
				g = m.grant.Lane[l].Max
			}
			p.H[l] += max(g, m.inflight[l])
		}
		for _, e := range s.prev.entries {
			if e.id != m.id || e.expires <= now.UnixMilli() || m.gen != s.losses {
				continue
			}
			for l := range lanes {
				if m.inflight[l] > e.holding(l) {
					t.Fatalf("%s has %d in flight in lane %d, its lease holds %d (entry %+v, grant %+v, gen %d of %d, now %d)", m.id, m.inflight[l], l, e.holding(l), e, m.grant, m.gen, s.losses, now.UnixMilli())
				}
			}
		}
	}
	p.total(s.lim)
	if !s.disrupt {
		if err := p.within(s.lim); err != nil {
			t.Fatalf("at %s, the live members may have: %v", now.Sub(t0), err)
		}
	}
}

// quiesce stops every load and disruption and lets the fleet settle for
// five leases (stalled members come back, dead ones expire, in flight
// drains). Then the invariant holds, and the idle members share the whole
// core lane (what an idle member's floor is in), a slot each at least.
func (s *sim) quiesce() {
	t := s.t
	for _, m := range s.alive() {
		m.load = [lanes]int{}
	}
	end := s.clock.Now().Add(5*stressLease + s.keep)
	for s.clock.Now().Before(end) {
		s.step(-1, true)
	}
	// Everyone renews once more, having drained.
	for range len(s.alive()) {
		s.step(-1, true)
	}
	st := s.read()
	if err := invariant(st, s.lim); err != nil {
		t.Fatalf("quiet: %v", err)
	}
	alive := s.alive()
	if len(st.entries) != len(alive) {
		t.Fatalf("quiet: %d leases for %d members", len(st.entries), len(alive))
	}
	lim := s.lim
	coreTotal := min(lim.Lane[core].Max, lim.Budget-lim.Lane[login].Reserved-lim.Lane[export].Reserved)
	sum := 0
	for _, e := range st.entries {
		if e.granted[login] != 0 || e.granted[export] != 0 {
			t.Errorf("quiet: %s holds login %d, export %d", e.id, e.granted[login], e.granted[export])
		}
		if coreTotal >= len(alive) && e.granted[core] < 1 {
			t.Errorf("quiet: %s has no core slot of %d for %d members", e.id, coreTotal, len(alive))
		}
		sum += e.granted[core]
	}
	if sum != coreTotal {
		t.Errorf("quiet: members hold %d core, want all %d (limits %+v)", sum, coreTotal, lim)
	}
}
