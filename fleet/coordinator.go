package fleet

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
)

// Renewer keeps a member's lease; *Leases is the real one.
type Renewer interface {
	Renew(ctx context.Context, member string, lim Limits, d Demand, p Pace) (Grant, error)
	Leave(ctx context.Context, member string) error
	LastMembers() int
	Members(ctx context.Context) ([]Member, error)
}

// Target is what the coordinator steers: the admission controller.
type Target interface {
	// Freeze holds each lane to what it has in flight, for the
	// renewal, and returns each lane's in-flight and queued counts.
	Freeze() (inFlight, queued [lanes]int)
	// Demand returns the same counts without holding anything.
	Demand() (inFlight, queued [lanes]int)
	// SetShare applies a share of the fleet's limits.
	SetShare(*admission.Share)
	// LoginPace returns the measured login completion rate per second,
	// and how many logins have arrived in all.
	LoginPace() (rate float64, arrivals uint64)
}

// CoordinatorOptions configure a Coordinator.
type CoordinatorOptions struct {
	// Member is this replica's id in the fleet.
	Member string
	// Limits returns the fleet's limits now: the configuration's, which
	// a reload may change.
	Limits func() Limits
	// Renew is how often the lease is renewed; Timeout bounds one
	// renewal.
	Renew   time.Duration
	Timeout time.Duration
	// Clock is read for every time; nil is the real clock.
	Clock clockwork.Clock
	// Log receives the coordinator's few lines; nil discards them.
	Log *zap.Logger
}

// The coordinator's states, as /status and /readyz name them.
const (
	// StateJoining: no grant yet; the replica admits nothing beyond
	// what a fallback share allows.
	StateJoining = "joining"
	// StateOK: the lease is renewed and its grant is in force.
	StateOK = "ok"
	// StateDegraded: renewals fail and the lease has expired; the
	// replica admits under the fallback share (the fleet's limits ÷ the
	// last known number of members) until Redis answers.
	StateDegraded = "degraded"
)

// Status is the coordinator's state for /status and metrics.
type Status struct {
	State   string
	Member  string
	Members int
	// Grant is the grant in force (the fallback's, while degraded) and
	// At when it was last renewed.
	Grant Grant
	At    time.Time
	// Demand is what this replica reported at the last renewal.
	Demand      Demand
	Renewals    uint64
	Failures    uint64
	LastError   string
	LastErrorAt time.Time
}

// Degraded reports whether the replica works on the fallback share.
func (s Status) Degraded() bool { return s.State == StateDegraded }

// Coordinator renews this replica's lease and applies its grant to the
// admission controller: the fast path stays local (a request never waits
// for Redis), and Redis sees one script call per renewal.
type Coordinator struct {
	leases Renewer
	target Target
	opts   CoordinatorOptions
	clock  clockwork.Clock
	log    *zap.Logger

	lastLog time.Time
	// arrivals and arrivedAt are the login arrivals counted at the last
	// renewal and when; arrivalRate their smoothed rate per second.
	arrivals    uint64
	arrivedAt   time.Time
	arrivalRate float64
	mu          sync.Mutex
	status      Status
	// others is what the other members had in flight at their last
	// renewals, as read after this member's own.
	others atomic.Int64

	// afterRenew, when a test sets it, runs at the end of every renewal.
	afterRenew func()
}

// NewCoordinator returns a coordinator renewing through leases and
// steering target. Until its first renewal, the replica works on the
// fallback share: the fleet's limits ÷ the members Redis last reported
// (one, before any).
func NewCoordinator(leases Renewer, target Target, opts CoordinatorOptions) *Coordinator {
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Renew <= 0 {
		opts.Renew = 300 * time.Millisecond
	}
	if opts.Timeout <= 0 {
		opts.Timeout = opts.Renew
	}
	return &Coordinator{
		leases: leases, target: target, opts: opts, clock: opts.Clock, log: opts.Log,
		status: Status{State: StateJoining, Member: opts.Member},
	}
}

// Run renews until ctx ends, then leaves the fleet so the others take this
// replica's share at once. The controller keeps its last share: a replica
// draining on shutdown must not admit more than it was granted.
func (c *Coordinator) Run(ctx context.Context) {
	// Until the first grant, nothing: the first renewal follows at once,
	// and a replica must not admit beyond a share the fleet has not
	// given it.
	c.target.SetShare(shareOf(Grant{}))
	t := c.clock.NewTicker(c.opts.Renew)
	defer t.Stop()
	for {
		c.renew(ctx)
		if c.afterRenew != nil {
			c.afterRenew()
		}
		select {
		case <-ctx.Done():
			lctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
			if err := c.leases.Leave(lctx, c.opts.Member); err != nil {
				c.log.Warn("fleet: could not leave; the others take this replica's share when its lease expires", zap.Error(err))
			}
			cancel()
			return
		case <-t.Chan():
		}
	}
}

// renew renews the lease once. While the script runs, the fleet may give
// what this replica does not use to others before the answer arrives, so
// the controller is frozen at its in-flight counts (those it reports) for
// the call; the answer, or on failure the grant cut to those counts, then
// replaces the freeze.
func (c *Coordinator) renew(ctx context.Context) {
	lim := c.opts.Limits()
	// Only a replica inside the fleet's accounting has a share others
	// could grow into during the call; one joining or on its fallback
	// share has none, and freezing it would only flicker its admission
	// between renewals.
	c.mu.Lock()
	inside := c.status.Grant.Valid(c.clock.Now()) && c.status.State == StateOK
	c.mu.Unlock()
	in, queued := c.target.Demand()
	if inside {
		in, queued = c.target.Freeze()
	}
	var d Demand
	for _, l := range admission.Lanes() {
		d[l] = LaneDemand{InFlight: in[l], Queued: queued[l]}
	}
	rctx, cancel := clockwork.WithTimeout(ctx, c.clock, c.opts.Timeout)
	g, err := c.leases.Renew(rctx, c.opts.Member, lim, d, c.pace())
	cancel()
	now := c.clock.Now()
	if err != nil {
		c.failed(now, lim, d, g, err)
		return
	}
	c.target.SetShare(shareOf(g))
	c.readOthers(ctx)
	c.mu.Lock()
	recovered := c.status.State == StateDegraded
	c.status.State, c.status.Grant, c.status.At, c.status.Demand = StateOK, g, now, d
	c.status.Members = g.Members
	c.status.Renewals++
	c.status.LastError = ""
	c.mu.Unlock()
	if recovered {
		c.log.Info("fleet: Redis answers again; this replica's lease is renewed", zap.Int("members", g.Members), zap.Int("budget", g.Budget))
		c.lastLog = time.Time{}
	}
}

// paceWindow is how long the login arrival rate reported to the fleet
// remembers: a storm moving between replicas moves its rate share within
// about this long, and one renewal's few arrivals do not swing it.
const paceWindow = 2 * time.Second

// pace is this replica's login pace to report: the controller's measured
// completion rate, and its arrivals per second smoothed over paceWindow.
func (c *Coordinator) pace() Pace {
	done, n := c.target.LoginPace()
	now := c.clock.Now()
	if !c.arrivedAt.IsZero() && now.After(c.arrivedAt) {
		dt := now.Sub(c.arrivedAt).Seconds()
		a := 1 - math.Exp(-dt/paceWindow.Seconds())
		c.arrivalRate += a * (float64(n-c.arrivals)/dt - c.arrivalRate)
	}
	c.arrivals, c.arrivedAt = n, now
	return Pace{Completions: done, Arrivals: c.arrivalRate}
}

// failed applies what the lease still allows after a failed renewal: the
// previous grant cut to what was in flight (the fleet may have given the
// rest away), until it expires. After, the replica falls back to the
// fleet's limits ÷ the last known members: fail-static, never the whole
// fleet's budget for one replica, and never nothing.
func (c *Coordinator) failed(now time.Time, lim Limits, d Demand, cut Grant, err error) {
	c.mu.Lock()
	st := &c.status
	st.Renewals++
	st.Failures++
	st.LastError, st.LastErrorAt = err.Error(), now
	expired := !cut.Valid(now)
	lost := expired && st.State != StateDegraded
	g := cut
	if expired {
		g = fallback(lim, c.leases.LastMembers())
		st.State = StateDegraded
	}
	st.Grant, st.Demand, st.Members = g, d, g.Members
	failures := st.Failures
	c.mu.Unlock()
	c.target.SetShare(shareOf(g))
	if lost || expired && now.Sub(c.lastLog) >= time.Minute {
		c.lastLog = now
		c.log.Warn("fleet: cannot renew the lease in Redis; admitting under the fleet's limits divided by the last known members until it answers",
			zap.Error(err), zap.Uint64("failed_renewals", failures), zap.Int("members", g.Members), zap.Int("budget", g.Budget))
	}
}

// fallback is a replica's share when it cannot reach the fleet: the
// fleet's limits divided by members, each lane's max at least one where
// the fleet has any, and the budget at least one.
func fallback(lim Limits, members int) Grant {
	members = max(members, 1)
	g := Grant{Members: members, Budget: max(1, lim.Budget/members)}
	if lim.Login.Enabled() {
		g.Login = admission.RateLimit{Rate: lim.Login.Rate / float64(members), Burst: max(1, lim.Login.Burst/members)}
	}
	for _, l := range admission.Lanes() {
		ll := lim.Lane[l]
		m := ll.Max / members
		if ll.Max > 0 {
			m = max(m, 1)
		}
		g.Lane[l] = LaneGrant{Max: min(m, g.Budget), Reserved: min(ll.Reserved/members, m)}
	}
	return g
}

// shareOf is the admission share a grant allows.
func shareOf(g Grant) *admission.Share {
	sh := &admission.Share{Budget: g.Budget, Login: g.Login, Members: g.Members, LoginRate: g.LoginRate,
		LoginBefore: g.LoginBefore}
	for _, l := range admission.Lanes() {
		sh.Lane[l] = admission.LaneShare{Max: g.Lane[l].Max, Reserved: g.Lane[l].Reserved}
	}
	if sh.Budget <= 0 {
		sh.Budget = -1 // admission reads 0 as "the lanes' sum"
	}
	return sh
}

// readOthers reads what the other members have in flight, for the pool
// watcher: the pool's clients that are the fleet's requests are not the
// pool's "others". On failure the last count stands.
func (c *Coordinator) readOthers(ctx context.Context) {
	rctx, cancel := clockwork.WithTimeout(ctx, c.clock, c.opts.Timeout)
	defer cancel()
	ms, err := c.leases.Members(rctx)
	if err != nil {
		return
	}
	n := 0
	for _, m := range ms {
		if m.ID == c.opts.Member {
			continue
		}
		for _, l := range admission.Lanes() {
			n += m.Demand[l].InFlight
		}
	}
	c.others.Store(int64(n))
}

// OthersInFlight is how many requests the fleet's other members had in
// flight at their last renewals: with this replica's own, what the pool
// serves of the fleet's.
func (c *Coordinator) OthersInFlight() int { return int(c.others.Load()) }

// Status returns the coordinator's state now.
func (c *Coordinator) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}
