package fleet

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"

	"github.com/lanegate/lanegate/admission"
)

//go:embed lease.lua
var leaseLua string

// Scripts other than the renewal: small enough to read here. Both take
// the fleet's hash as KEYS[1].
const (
	// readLua returns now (ARGV[1], or Redis's TIME when empty) followed
	// by the hash's fields and values.
	readLua = `
local now = tonumber(ARGV[1])
if now == nil then
	local t = redis.call('TIME')
	now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local out = { now }
local all = redis.call('HGETALL', KEYS[1])
for k = 1, #all do
	out[k + 1] = all[k]
end
return out
`
	// leaveLua removes the member field ARGV[1].
	leaveLua = `return redis.call('HDEL', KEYS[1], ARGV[1])`
)

// memberPrefix starts every member's field of the fleet's hash, so that no
// member id can be taken for the epoch.
const memberPrefix = "m:"

// maxIDLen bounds fleet names and member ids: they are keys and fields
// read on every renewal.
const maxIDLen = 200

// Leases renews members' leases on one fleet's budget in Redis. It is safe
// for concurrent use by several members, but calls of Renew for one member
// must not overlap.
//
// Besides Redis, it remembers each member's current grant (what the member
// may use, also after a failed renewal), which is what makes the learning
// period safe: each renewal reports it.
type Leases struct {
	client    redis.Scripter
	key       string
	lease     time.Duration
	clock     clockwork.Clock
	clockTime bool
	// fallbackFor is how long a member whose lease ran out still counts
	// as holding its fallback share (see KeepFallback).
	fallbackFor time.Duration
	renew       *redis.Script
	read        *redis.Script
	leave       *redis.Script
	// line holds the login line's keys, of which the renewal reads the
	// waiting logins and where they wait.
	line []string

	members atomic.Int64 // last known number of live members

	mu   sync.Mutex
	held map[string]Grant // by member: its current grant
}

// Option changes how Leases works.
type Option func(*Leases)

// ClockTime makes the script time leases by the clock given to NewLeases
// instead of Redis's TIME: for tests with a fake clock, or a fleet whose
// members' clocks agree to well within a lease. A member whose clock runs
// ahead of the others' expires their leases early and grows into capacity
// they still hold.
func ClockTime() Option { return func(l *Leases) { l.clockTime = true } }

// KeepFallback makes the fleet count a member whose lease ran out as
// holding its fallback share (the fleet's limits ÷ the members it knew)
// for d more: it may be alive and cut off from Redis, admitting under that
// share, and the others then do not grow into it. A member that died
// frees it after d, the rest of its share after the lease as before. Zero,
// the default, counts nothing past the lease: the others take the whole
// share at once, and a member cut off from Redis past its lease admits
// beside them under its fallback share, beyond the fleet's budget.
func KeepFallback(d time.Duration) Option { return func(l *Leases) { l.fallbackFor = max(d, 0) } }

// NewLeases returns the leases of the fleet named fleet, kept in Redis
// through client, lasting lease each (rounded up to whole milliseconds).
// The clock times the members' side of their leases (Grant.Expires); nil
// means the real clock.
//
// The fleet's hash is lanegate:{fleet}:lease, so fleet must not contain
// braces. client should bound every call (lanegate's clients enable
// go-redis's ContextTimeoutEnabled, so that a context's deadline bounds a
// call to a hanging Redis). NewLeases does no I/O.
func NewLeases(client redis.Scripter, fleet string, lease time.Duration, clock clockwork.Clock, opts ...Option) (*Leases, error) {
	if client == nil {
		return nil, errors.New("fleet: no Redis client")
	}
	if fleet == "" || len(fleet) > maxIDLen || strings.ContainsAny(fleet, "{}") {
		return nil, fmt.Errorf("fleet: name %q: must be 1 to %d bytes without braces", fleet, maxIDLen)
	}
	if lease <= 0 {
		return nil, fmt.Errorf("fleet: lease %s: must be positive", lease)
	}
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	l := &Leases{
		client: client,
		key:    "lanegate:{" + fleet + "}:lease",
		lease:  time.Duration(millis(lease)) * time.Millisecond,
		clock:  clock,
		renew:  redis.NewScript(leaseLua),
		read:   redis.NewScript(readLua),
		leave:  redis.NewScript(leaveLua),
		line:   lineKeys(fleet),
		held:   map[string]Grant{},
	}
	for _, o := range opts {
		o(l)
	}
	return l, nil
}

// Key returns the Redis key of the fleet's hash, for operators.
func (l *Leases) Key() string { return l.key }

// Lease returns the lease's length.
func (l *Leases) Lease() time.Duration { return l.lease }

// LastMembers returns the number of live members the fleet had at the last
// successful Renew or Members, 0 before any: what a member falls back on
// (the budget divided among them) when Redis stays out of reach.
func (l *Leases) LastMembers() int { return int(l.members.Load()) }

// Renew renews member's lease under the fleet's limits lim, reporting its
// demand d, and returns its grant: its local lane maxima and reservations
// until Grant.Expires.
//
// The caller's side of the invariant (see the package doc): from the call
// until it returns, the member admits in no lane more than d's InFlight
// (nor more than its current grant), because the script may have recorded
// a smaller grant that others grow into before the answer arrives. On
// error, the returned Grant is what the member may still use: its previous
// grant cut, lane by lane, to d's InFlight, until its previous expiry
// (zero, already expired, when it had none). Whether the script ran is not
// known then, and this grant is safe either way.
//
// d's counts above about a million are taken as a million.
func (l *Leases) Renew(ctx context.Context, member string, lim Limits, d Demand, p Pace) (Grant, error) {
	start := l.clock.Now()
	held := l.current(member, start)
	if err := checkMember(member); err != nil {
		return held, fmt.Errorf("fleet: renew: %w", err)
	}
	if err := errors.Join(lim.Validate(), d.validate(), p.validate()); err != nil {
		return held, fmt.Errorf("fleet: renew %s: %w", member, err)
	}
	for _, ln := range admission.Lanes() {
		d[ln].InFlight = min(d[ln].InFlight, maxDemand)
		d[ln].Queued = min(d[ln].Queued, maxDemand)
	}

	now := ""
	if l.clockTime {
		now = strconv.FormatInt(start.UnixMilli(), 10)
	}
	args := make([]any, 0, 26)
	args = append(args, memberPrefix+member, now, l.lease.Milliseconds(), lim.Budget)
	for ln := range lanes {
		args = append(args, lim.Lane[ln].Reserved, lim.Lane[ln].Max)
	}
	for ln := range lanes {
		args = append(args, d[ln].InFlight, d[ln].Queued, held.Lane[ln].Max)
	}
	args = append(args, int(admission.Core), perKilo(p.Completions), perKilo(p.Arrivals),
		perKilo(lim.Login.Rate), max(lim.Login.Burst, 0), int(admission.Login), millis(l.fallbackFor))

	res, err := l.renew.Run(ctx, l.client, []string{l.key, l.line[1], l.line[2]}, args...).Int64Slice()
	if err == nil && len(res) != 2*lanes+8 {
		err = fmt.Errorf("script returned %d values, want %d", len(res), 2*lanes+8)
	}
	if err != nil {
		g := l.cut(member, d)
		return g, fmt.Errorf("fleet: renew %s: %w", member, err)
	}

	var g Grant
	for ln := range lanes {
		g.Lane[ln] = LaneGrant{Max: int(res[2*ln]), Reserved: int(res[2*ln+1])}
		g.Budget += g.Lane[ln].Max
	}
	g.Members = int(res[2*lanes])
	g.Learning = res[2*lanes+3] == 1
	g.LoginRate = float64(res[2*lanes+4]) / 1000
	if lim.Login.Enabled() {
		g.Login = admission.RateLimit{Rate: float64(res[2*lanes+5]) / 1000, Burst: int(res[2*lanes+6])}
	}
	if b := res[2*lanes+7]; b >= 0 {
		g.LoginBefore = time.UnixMicro(b)
	}
	// The member's lease ends when the fleet's does, counted from before
	// the call: never later than in Redis. With ClockTime both are whole
	// milliseconds of the same clock.
	g.Expires = start.Add(l.lease)
	if l.clockTime {
		g.Expires = start.Add(l.lease - time.Duration(start.Nanosecond()%int(time.Millisecond)))
	}
	l.members.Store(int64(g.Members))
	l.mu.Lock()
	l.held[member] = g
	l.mu.Unlock()
	return g, nil
}

// current returns member's grant at now: nothing once it has expired.
func (l *Leases) current(member string, now time.Time) Grant {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, ok := l.held[member]
	if !ok || !g.Valid(now) {
		return Grant{Members: l.LastMembers(), Expires: g.Expires}
	}
	return g
}

// cut keeps, after a failed renewal, at most what member had in flight of
// each lane within its grant, and returns that grant.
func (l *Leases) cut(member string, d Demand) Grant {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, ok := l.held[member]
	if !ok {
		return Grant{Members: l.LastMembers()}
	}
	g.Budget = 0
	for ln := range lanes {
		lg := &g.Lane[ln]
		lg.Max = min(lg.Max, d[ln].InFlight)
		lg.Reserved = min(lg.Reserved, lg.Max)
		g.Budget += lg.Max
	}
	g.Members = l.LastMembers()
	l.held[member] = g
	return g
}

// Leave ends member's lease at once, so that the others may take its
// share at their next renewals. Call it when the member has drained: the
// fleet stops counting what it has in flight. Its local grant is
// forgotten whether or not Redis took the removal; if Redis did not, the
// lease expires on its own.
func (l *Leases) Leave(ctx context.Context, member string) error {
	if err := checkMember(member); err != nil {
		return fmt.Errorf("fleet: leave: %w", err)
	}
	l.mu.Lock()
	delete(l.held, member)
	l.mu.Unlock()
	if err := l.leave.Run(ctx, l.client, []string{l.key}, memberPrefix+member).Err(); err != nil {
		return fmt.Errorf("fleet: leave %s: %w", member, err)
	}
	return nil
}

// Member is one live member as the fleet has it, for status pages.
type Member struct {
	// ID is the member's id, as given to Renew.
	ID string
	// Lane holds its grant per lane, indexed by admission.Lane.
	Lane [lanes]LaneGrant
	// Demand is what it reported at its last renewal.
	Demand Demand
	// Age is how long ago it last renewed.
	Age time.Duration
	// Remaining is how long its lease has left.
	Remaining time.Duration
	// Pace is its login pace at its last renewal.
	Pace Pace
}

// Members returns the fleet's live members, ordered by id: one read, no
// write (expired members still stored are left out).
func (l *Leases) Members(ctx context.Context) ([]Member, error) {
	now := ""
	if l.clockTime {
		now = strconv.FormatInt(l.clock.Now().UnixMilli(), 10)
	}
	res, err := l.read.Run(ctx, l.client, []string{l.key}, now).Slice()
	if err != nil {
		return nil, fmt.Errorf("fleet: members: %w", err)
	}
	st, err := parseState(res)
	if err != nil {
		return nil, fmt.Errorf("fleet: members: %w", err)
	}
	out := make([]Member, 0, len(st.entries))
	for _, e := range st.entries {
		if e.expires <= st.now {
			continue
		}
		m := Member{
			ID:        e.id,
			Age:       time.Duration(st.now-e.renewed) * time.Millisecond,
			Remaining: time.Duration(e.expires-st.now) * time.Millisecond,
		}
		for ln := range lanes {
			m.Lane[ln] = LaneGrant{Max: e.granted[ln], Reserved: e.reserved[ln]}
			m.Demand[ln] = LaneDemand{InFlight: e.inflight[ln], Queued: e.queued[ln]}
		}
		m.Pace = Pace{Completions: float64(e.done) / 1000, Arrivals: float64(e.arrived) / 1000}
		out = append(out, m)
	}
	l.members.Store(int64(len(out)))
	return out, nil
}

// checkMember refuses ids that cannot be a member.
func checkMember(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("member id %q: must be 1 to %d bytes", id, maxIDLen)
	}
	return nil
}

// perKilo is x per second as a whole number per 1000 s, for the script's
// integers; 0.001/s is fine enough for a login pace.
func perKilo(x float64) int64 { return int64(math.Round(min(max(x, 0), maxDemand) * 1000)) }

// millis is d in whole milliseconds, rounded up.
func millis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
