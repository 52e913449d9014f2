package session

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// Defaults of CacheOptions.
const (
	DefaultTTL          = 5 * time.Minute
	DefaultCoalesceWait = 100 * time.Millisecond
	// DefaultIdentityMaxAge matches the Django side's default freshness
	// window; lanegate signs the identity immediately before forwarding.
	DefaultIdentityMaxAge = 5 * time.Second
	// grantMaxAge bounds how old a grant or revocation may be when it
	// reaches lanegate: the time between Django signing a response header
	// and lanegate reading it, plus clock skew.
	grantMaxAge = 30 * time.Second
	// tombstoneTTL outlasts any grant still in flight when a revocation
	// lands (grantMaxAge plus skew), so that grant cannot be stored.
	tombstoneTTL = 2 * grantMaxAge
	clockSkew    = 2 * time.Second
	// failureBackoff is how long the store is left alone after it failed,
	// so that a Redis outage costs requests one timeout per backoff, not
	// one each.
	failureBackoff = time.Second
	// logEvery rate-limits store failure logs.
	logEvery = 10 * time.Second
	// maxPending bounds the revocations kept for retry while the store
	// fails (see Cache.addPending); 10,000 keys take under a megabyte.
	maxPending = 10000
	// flushBatch and flushBudget bound what one request spends retrying
	// pending revocations before its own lookup: at most flushBatch
	// tombstone writes, and no new one once flushBudget has passed. The
	// rest waits for the next request.
	flushBatch  = 32
	flushBudget = 50 * time.Millisecond
)

// Observer receives store latencies, for metrics. The proxy implements it.
type Observer interface {
	ObserveStore(op string, d time.Duration, err error)
}

// CacheOptions configure a Cache.
type CacheOptions struct {
	// Store keeps the entries; required.
	Store Store
	// Keyring signs identities and grant requests and verifies grants and
	// revocations; required.
	Keyring *Keyring
	// Cookie is Django's SESSION_COOKIE_NAME; default "sessionid".
	Cookie string
	// TTL is the longest an entry is trusted without Django granting it
	// again. An entry never outlives the session's own expiry.
	TTL time.Duration
	// CoalesceWait is how long a request whose session is being granted
	// by a concurrent request waits for that grant before going to Django
	// on its own.
	CoalesceWait time.Duration
	// Clock is the time source; nil means the real clock.
	Clock clockwork.Clock
	// Log receives rate-limited store failures.
	Log *zap.Logger
	// Observer, when set, receives store latencies.
	Observer Observer
}

// Cache is the session side of the proxy: it turns a request's session
// cookie into a signed identity for Django when Django granted one, and
// learns grants and revocations from Django's responses.
//
// It fails open: when the store errors or is slow, requests are forwarded
// without an identity and Django reads the session itself.
type Cache struct {
	store    Store
	kr       *Keyring
	keys     KeyMaker
	cookie   string
	ttl      time.Duration
	coalesce time.Duration
	clock    clockwork.Clock
	log      *zap.Logger
	obs      Observer

	flights [flightShards]flightShard

	downUntil atomic.Int64 // unix ns; the store is skipped before it
	lastLog   atomic.Int64 // unix ns of the last failure log
	lastErr   atomic.Pointer[storeFailure]
	grantReq  atomic.Pointer[signedAt]

	// Revocations the store did not take. pendingN is len(pending), read
	// without the lock so that lookups pay one atomic load while nothing
	// is pending; pending maps a key to the unix ns until which it is
	// never trusted here. distrustUntil (unix ns) is set when pending
	// overflowed: before it, every lookup misses.
	pendingN      atomic.Int64
	pendMu        sync.RWMutex
	pending       map[Key]int64
	maxPending    int
	flushing      atomic.Bool // one request at a time retries pending
	distrustUntil atomic.Int64
	lastPendLog   atomic.Int64 // unix ns of the last pending log
	lastOverLog   atomic.Int64 // unix ns of the last overflow log

	stats cacheCounters
}

type storeFailure struct {
	at  time.Time
	err string
}

type cacheCounters struct {
	hits, misses, noCookie, coalesced     atomic.Uint64
	grants, grantsRejected, revocations   atomic.Uint64
	revokesRejected, storeErrors, skipped atomic.Uint64
	identityStale                         atomic.Uint64
	revokesOverflow                       atomic.Uint64
}

// Stats are a Cache's counters since start.
type Stats struct {
	// Hits are requests forwarded with an identity.
	Hits uint64 `json:"hits"`
	// Misses are requests with a session cookie that had no entry.
	Misses uint64 `json:"misses"`
	// NoCookie are requests without a session cookie.
	NoCookie uint64 `json:"no_cookie"`
	// Coalesced are misses that waited for a concurrent request's grant.
	Coalesced uint64 `json:"coalesced"`
	// Grants stored, and grants refused (bad signature, stale, not for
	// this session, revoked).
	Grants         uint64 `json:"grants"`
	GrantsRejected uint64 `json:"grants_rejected"`
	// Revocations applied, and revocation headers refused.
	Revocations     uint64 `json:"revocations"`
	RevokesRejected uint64 `json:"revokes_rejected"`
	// StoreErrors counts failed store calls; Skipped counts lookups not
	// attempted because the store failed within the last second.
	StoreErrors uint64 `json:"store_errors"`
	Skipped     uint64 `json:"skipped"`
	// RevokesPending counts the revocations the store failed to take
	// that are kept for retry now; their sessions are not trusted here
	// meanwhile. RevokesOverflow counts failed revocations that found the
	// pending set full: each one turns trust off on this instance for
	// the cache TTL plus the tombstone period.
	RevokesPending  uint64 `json:"revokes_pending"`
	RevokesOverflow uint64 `json:"revokes_overflow"`
}

// Health is the store's state as the cache has seen it.
type Health struct {
	// Degraded is true while the store is being skipped after a failure.
	Degraded bool
	// LastError is the most recent store failure and when it happened.
	LastError   string
	LastErrorAt time.Time
}

const flightShards = 32

type flightShard struct {
	mu sync.Mutex
	m  map[Key]chan struct{}
}

// NewCache returns a cache over opts.Store.
func NewCache(opts CacheOptions) (*Cache, error) {
	if opts.Store == nil || opts.Keyring == nil {
		return nil, errors.New("session: cache needs a store and a keyring")
	}
	c := &Cache{
		store:    opts.Store,
		kr:       opts.Keyring,
		keys:     NewKeyMaker(opts.Keyring),
		cookie:   opts.Cookie,
		ttl:      opts.TTL,
		coalesce: opts.CoalesceWait,
		clock:    opts.Clock,
		log:      opts.Log,
		obs:      opts.Observer,

		pending:    make(map[Key]int64),
		maxPending: maxPending,
	}
	if c.cookie == "" {
		c.cookie = "sessionid"
	}
	if c.ttl <= 0 {
		c.ttl = DefaultTTL
	}
	if c.clock == nil {
		c.clock = clockwork.NewRealClock()
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	for i := range c.flights {
		c.flights[i].m = make(map[Key]chan struct{})
	}
	return c, nil
}

// Store returns the cache's store.
func (c *Cache) Store() Store { return c.store }

// Len reports how many entries and tombstones the store holds. For Redis
// it is the size of the whole database lanegate uses.
func (c *Cache) Len(ctx context.Context) (int, error) { return c.store.Len(ctx) }

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	s := &c.stats
	return Stats{
		Hits: s.hits.Load(), Misses: s.misses.Load(), NoCookie: s.noCookie.Load(), Coalesced: s.coalesced.Load(),
		Grants: s.grants.Load(), GrantsRejected: s.grantsRejected.Load(),
		Revocations: s.revocations.Load(), RevokesRejected: s.revokesRejected.Load(),
		StoreErrors: s.storeErrors.Load(), Skipped: s.skipped.Load(),
		RevokesPending: uint64(max(0, c.pendingN.Load())), RevokesOverflow: s.revokesOverflow.Load(),
	}
}

// Health reports whether the store is currently failing.
func (c *Cache) Health() Health {
	h := Health{Degraded: c.clock.Now().UnixNano() < c.downUntil.Load()}
	if f := c.lastErr.Load(); f != nil {
		h.LastError, h.LastErrorAt = f.err, f.at
	}
	return h
}

// Request is one request's session state between Begin and End.
type Request struct {
	// Identity is the X-Lanegate-Identity value to forward, or "".
	Identity string
	// GrantRequest is the X-Lanegate-Grant-Request value to forward, or "".
	GrantRequest string

	cookie string // the session cookie's value, "" when none
	sid    string
	key    Key
	leader bool // owns the flight for key; End releases it
}

// Authenticated reports whether the request is forwarded with an identity:
// a session Django granted and did not revoke.
func (r *Request) Authenticated() bool { return r.Identity != "" }

// Begin looks up the request's session. It returns after at most the
// store's timeout plus CoalesceWait; ctx ending cuts it short. Call End
// with the result when the response is done, whatever happened.
func (c *Cache) Begin(ctx context.Context, h http.Header) *Request {
	if c.pendingN.Load() > 0 {
		c.flushPending(ctx)
	}
	r := &Request{}
	cookie, ok := SessionCookie(h, c.cookie)
	if !ok {
		c.stats.noCookie.Add(1)
		r.GrantRequest = c.grantRequest()
		return r
	}
	r.cookie = cookie
	r.sid = SessionHash(cookie)
	r.key = c.keys.Key(r.sid)
	if c.lookup(ctx, r) {
		return r
	}
	done, leader := c.join(r.key)
	if leader {
		r.leader = true
		c.stats.misses.Add(1)
		r.GrantRequest = c.grantRequest()
		return r
	}
	// Another request of this session is asking Django for a grant: wait
	// briefly for it rather than make Django read the session again.
	c.stats.coalesced.Add(1)
	t := c.clock.NewTimer(c.coalesce)
	defer t.Stop()
	select {
	case <-done:
		if c.lookup(ctx, r) {
			return r
		}
	case <-t.Chan():
	case <-ctx.Done():
	}
	c.stats.misses.Add(1)
	return r
}

// lookup fills r.Identity from the store and reports a hit.
func (c *Cache) lookup(ctx context.Context, r *Request) bool {
	now := c.clock.Now()
	if c.distrusted(r.key, now) {
		return false
	}
	if now.UnixNano() < c.downUntil.Load() {
		c.stats.skipped.Add(1)
		return false
	}
	e, ok, err := c.storeGet(ctx, r.key)
	if err != nil || !ok {
		return false
	}
	if !now.Before(e.Expires) {
		return false
	}
	// Again after the store answered: a revocation that failed while the
	// Get was in flight wins over what the Get found.
	if c.distrusted(r.key, c.clock.Now()) {
		return false
	}
	r.Identity = c.kr.Sign(&Claims{
		Type: TypeIdentity, SID: r.sid, UserID: e.UserID, AuthHash: e.AuthHash,
		Expires: e.Expires.Unix(), IssuedAt: now.Unix(),
	})
	c.stats.hits.Add(1)
	return true
}

// grantRequest returns the grant request token of the current second. It
// names no session and carries only its second, so one signed token serves
// every request of that second: anonymous traffic pays no HMAC and no
// allocation for it.
func (c *Cache) grantRequest() string {
	now := c.clock.Now().Unix()
	if g := c.grantReq.Load(); g != nil && g.at == now {
		return g.token
	}
	g := &signedAt{at: now, token: c.kr.Sign(&Claims{Type: TypeGrantRequest, IssuedAt: now})}
	c.grantReq.Store(g)
	return g.token
}

// signedAt is a token and the second it was signed in.
type signedAt struct {
	at    int64
	token string
}

// join makes the caller the leader for k, or returns the leader's done
// channel.
func (c *Cache) join(k Key) (done <-chan struct{}, leader bool) {
	s := &c.flights[k[1]%flightShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.m[k]; ok {
		return ch, false
	}
	s.m[k] = make(chan struct{})
	return nil, true
}

// End releases the request's part in coalescing. It is safe to call more
// than once.
func (c *Cache) End(r *Request) {
	if r == nil || !r.leader {
		return
	}
	r.leader = false
	s := &c.flights[r.key[1]%flightShards]
	s.mu.Lock()
	ch := s.m[r.key]
	delete(s.m, r.key)
	s.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// Response learns from Django's response headers and removes lanegate's
// headers from them, so none reaches the client. status is the response
// status; grants on 5xx answers are ignored.
func (c *Cache) Response(ctx context.Context, r *Request, h http.Header, status int) {
	grants, revokes := h[HeaderGrant], h[HeaderRevoke]
	if grants == nil && revokes == nil && h["Set-Cookie"] == nil {
		c.End(r)
		return
	}
	delete(h, HeaderGrant)
	delete(h, HeaderRevoke)
	// A revocation must land even if the client hangs up now: a logout
	// whose response nobody reads is still a logout.
	ctx = context.WithoutCancel(ctx)
	now := c.clock.Now()
	w := Window{MaxAge: grantMaxAge, Skew: clockSkew}

	// The cookie Django leaves the client with: a login or password change
	// cycles it, a logout deletes it. Either way the old one is over.
	newCookie, set := setCookieValue(h, c.cookie)
	revoked := map[string]bool{}
	if set && r.cookie != "" && newCookie != r.cookie {
		c.revoke(ctx, r.key)
		revoked[r.sid] = true // Django's revoke header usually names it too
	}
	for _, v := range revokes {
		cl, err := c.kr.Verify(v, TypeRevoke, now, w)
		if err != nil {
			c.stats.revokesRejected.Add(1)
			c.log.Debug("revocation refused", zap.Error(err))
			continue
		}
		for _, sid := range cl.SIDs {
			// Once per session and response: with a failing store, a
			// logout costs one store timeout, not one per mention.
			if !revoked[sid] {
				revoked[sid] = true
				c.revoke(ctx, c.keys.Key(sid))
			}
		}
	}
	// A grant is only believed for a request lanegate asked one for, and
	// only about the session the client will hold after this response.
	for _, v := range grants {
		if err := c.grant(ctx, r, v, newCookie, set, revoked, now, status); err != nil {
			c.stats.grantsRejected.Add(1)
			c.log.Debug("grant refused", zap.Error(err))
		}
	}
	c.End(r)
}

func (c *Cache) grant(ctx context.Context, r *Request, token, newCookie string, set bool, revoked map[string]bool, now time.Time, status int) error {
	if r.GrantRequest == "" {
		return errors.New("no grant was requested")
	}
	if status >= 500 {
		return fmt.Errorf("status %d", status)
	}
	cl, err := c.kr.Verify(token, TypeGrant, now, Window{MaxAge: grantMaxAge, Skew: clockSkew})
	if err != nil {
		return err
	}
	cookie := r.cookie
	if set {
		cookie = newCookie
	}
	if cookie == "" {
		return errors.New("the client holds no session cookie")
	}
	sid := SessionHash(cookie)
	if cl.SID != sid {
		return errors.New("grant names another session")
	}
	if revoked[sid] {
		return errors.New("the same response revoked the session")
	}
	exp := time.Unix(cl.Expires, 0)
	ttl := min(c.ttl, exp.Sub(now))
	if cl.UserID == "" || ttl <= 0 {
		return errors.New("grant without a user or already expired")
	}
	key := c.keys.Key(sid)
	if r.cookie != "" && sid == r.sid {
		key = r.key
	}
	if c.pendingN.Load() > 0 && c.isPending(key, now) {
		return errors.New("the session's revocation has not reached the store yet")
	}
	e := Entry{UserID: cl.UserID, AuthHash: cl.AuthHash, Expires: exp, Granted: time.Unix(cl.IssuedAt, 0)}
	start := c.clock.Now()
	stored, err := c.store.Put(ctx, key, e, ttl)
	c.observe("put", start, err)
	if err != nil {
		return nil // counted as a store error, not a bad grant
	}
	if stored {
		c.stats.grants.Add(1)
	} else {
		return errors.New("session revoked moments ago")
	}
	return nil
}

// revoke removes k from the store, leaving a tombstone. When the store
// fails, the revocation is kept pending: k is not trusted here meanwhile,
// and the tombstone is written again once the store answers.
func (c *Cache) revoke(ctx context.Context, k Key) {
	if err := c.storeRevoke(ctx, k); err != nil {
		c.addPending(k, c.clock.Now())
		return
	}
	if c.pendingN.Load() > 0 {
		c.unpend(k)
	}
}

func (c *Cache) storeRevoke(ctx context.Context, k Key) error {
	start := c.clock.Now()
	err := c.store.Revoke(ctx, k, tombstoneTTL)
	c.observe("revoke", start, err)
	if err == nil {
		c.stats.revocations.Add(1)
	}
	return err
}

// Pending revocations.
//
// A revocation the store did not take (Redis down, slow past its timeout,
// partitioned) may have left the entry in the store: a Redis that comes
// back with its data, or that applied nothing of what timed out, would
// otherwise vouch for a logged-out cookie until the entry's TTL. So the
// cache keeps the key for the longest that entry can live: the cache TTL,
// plus the tombstone period for a grant signed just before the logout and
// stored afterwards by another replica, which the tombstone would have
// refused. Until then, or until the tombstone is written:
//
//   - a lookup of the key on this instance misses, whatever the store says;
//   - a grant for the key is refused;
//   - the first request after the store's backoff writes the tombstone
//     again (flushPending), a few keys per request, one request at a time.
//
// The set is bounded by maxPending. A revocation that finds it full (and
// nothing in it expired) cannot be remembered, and its key cannot be told
// from any other: trust is then turned off on this instance, every lookup
// a miss, for the same TTL plus tombstone period after it, and the event
// is counted and logged as an error. That fails open, like an outage:
// requests take Django's own session read, which is slower but never
// wrong; forgetting the key, or evicting another, would be wrong.

// pendingFor is how long a key whose revocation failed at now stays
// untrusted: no entry stored before the revocation, nor any a grant signed
// before it could still store, outlives it.
func (c *Cache) pendingFor() time.Duration { return c.ttl + tombstoneTTL }

// distrusted reports whether a lookup of k must miss whatever the store
// holds: its revocation is pending, or the pending set overflowed.
func (c *Cache) distrusted(k Key, now time.Time) bool {
	if now.UnixNano() < c.distrustUntil.Load() {
		return true
	}
	return c.pendingN.Load() > 0 && c.isPending(k, now)
}

// isPending reports whether k's revocation is pending at now.
func (c *Cache) isPending(k Key, now time.Time) bool {
	c.pendMu.RLock()
	until, ok := c.pending[k]
	c.pendMu.RUnlock()
	return ok && now.UnixNano() < until
}

// addPending keeps k's failed revocation for retry, or, when the set is
// full, turns trust off on this instance (see above).
func (c *Cache) addPending(k Key, now time.Time) {
	until := now.Add(c.pendingFor()).UnixNano()
	c.pendMu.Lock()
	_, known := c.pending[k]
	if !known && len(c.pending) >= c.maxPending {
		c.prunePendingLocked(now)
	}
	if known || len(c.pending) < c.maxPending {
		c.pending[k] = max(c.pending[k], until)
		n := len(c.pending)
		c.pendingN.Store(int64(n))
		c.pendMu.Unlock()
		if c.logNow(&c.lastPendLog, now) {
			c.log.Warn("session revocation failed; the session is not trusted here and the revocation is retried when the store answers",
				zap.Int("pending", n))
		}
		return
	}
	c.pendMu.Unlock()
	for {
		old := c.distrustUntil.Load()
		if old >= until || c.distrustUntil.CompareAndSwap(old, until) {
			break
		}
	}
	c.stats.revokesOverflow.Add(1)
	if c.logNow(&c.lastOverLog, now) {
		c.log.Error("session revocations pending over the limit; no session is trusted on this instance until the cache TTL has passed",
			zap.Int("limit", c.maxPending), zap.Duration("for", c.pendingFor()))
	}
}

// logNow rate-limits a log line to one per logEvery.
func (c *Cache) logNow(last *atomic.Int64, now time.Time) bool {
	l := last.Load()
	return now.UnixNano()-l >= int64(logEvery) && last.CompareAndSwap(l, now.UnixNano())
}

// unpend forgets k's pending revocation: its tombstone is in the store.
func (c *Cache) unpend(k Key) {
	c.pendMu.Lock()
	delete(c.pending, k)
	c.pendingN.Store(int64(len(c.pending)))
	c.pendMu.Unlock()
}

// prunePendingLocked drops pending revocations whose entries cannot exist
// any more. pendMu must be held.
func (c *Cache) prunePendingLocked(now time.Time) {
	for k, until := range c.pending {
		if now.UnixNano() >= until {
			delete(c.pending, k)
		}
	}
	c.pendingN.Store(int64(len(c.pending)))
}

// flushPending writes the tombstones of pending revocations again, unless
// the store is backed off or another request is already at it. It stops at
// the first failure (which backs the store off again), after flushBatch
// keys, or once flushBudget has passed, so the request that does it pays
// about one store call's worth more than its own lookup. It runs with the
// request's values but not its cancellation: a client hanging up does not
// make a store write look failed.
func (c *Cache) flushPending(ctx context.Context) {
	now := c.clock.Now()
	if now.UnixNano() < c.downUntil.Load() || !c.flushing.CompareAndSwap(false, true) {
		return
	}
	defer c.flushing.Store(false)
	c.pendMu.Lock()
	c.prunePendingLocked(now)
	keys := make([]Key, 0, min(len(c.pending), flushBatch))
	for k := range c.pending {
		if len(keys) == flushBatch {
			break
		}
		keys = append(keys, k)
	}
	c.pendMu.Unlock()
	ctx = context.WithoutCancel(ctx)
	for _, k := range keys {
		if c.storeRevoke(ctx, k) != nil {
			return
		}
		c.unpend(k)
		if c.clock.Since(now) >= flushBudget {
			return
		}
	}
}

func (c *Cache) storeGet(ctx context.Context, k Key) (Entry, bool, error) {
	start := c.clock.Now()
	e, ok, err := c.store.Get(ctx, k)
	c.observe("get", start, err)
	return e, ok, err
}

// observe records a store call and, on failure, backs off the store and
// logs at most once per logEvery.
func (c *Cache) observe(op string, start time.Time, err error) {
	now := c.clock.Now()
	if errors.Is(err, context.Canceled) {
		err = nil // the client left; the store is fine
	}
	if c.obs != nil {
		c.obs.ObserveStore(op, now.Sub(start), err)
	}
	if err == nil {
		return
	}
	c.stats.storeErrors.Add(1)
	if errors.Is(err, ErrCorrupt) {
		// One unreadable value says nothing about the store's health.
		c.log.Warn("session store holds an unreadable value; treated as a miss", zap.String("op", op), zap.Error(err))
		return
	}
	c.downUntil.Store(now.Add(failureBackoff).UnixNano())
	c.lastErr.Store(&storeFailure{at: now, err: op + ": " + redactAddrs(err.Error())})
	last := c.lastLog.Load()
	if now.UnixNano()-last >= int64(logEvery) && c.lastLog.CompareAndSwap(last, now.UnixNano()) {
		c.log.Warn("session store failing; requests go to Django without identity",
			zap.String("op", op), zap.Error(err))
	}
}

// addrPattern matches host:port and bare IP addresses in error texts.
var addrPattern = regexp.MustCompile(`\[[0-9a-fA-F:.]+\](:\d+)?|\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b|\b[\w.-]+:\d{2,5}\b`)

// redactAddrs removes network addresses from an error text shown on
// /status: the store's address is the operator's to know, not every
// holder of an admin token's. The log line keeps the whole error.
func redactAddrs(s string) string { return addrPattern.ReplaceAllString(s, "<addr>") }

// SessionCookie returns the value of the named cookie in a request's
// Cookie headers, without parsing the others. A value Django would not
// take as a session key (shorter than 8 characters, or with characters
// outside [a-z0-9]) counts as no cookie.
func SessionCookie(h http.Header, name string) (string, bool) {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			k, v, ok := strings.Cut(part, "=")
			if !ok || k != name {
				continue
			}
			v = strings.Trim(v, `"`)
			return v, validSessionKey(v)
		}
	}
	return "", false
}

func validSessionKey(v string) bool {
	if len(v) < 8 || len(v) > 64 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// setCookieValue returns the value the response sets for the named cookie,
// "" when it deletes it, and whether it sets it at all.
func setCookieValue(h http.Header, name string) (string, bool) {
	var (
		val string
		set bool
	)
	for _, line := range h["Set-Cookie"] {
		first, attrs, _ := strings.Cut(line, ";")
		k, v, ok := strings.Cut(strings.TrimSpace(first), "=")
		if !ok || k != name {
			continue
		}
		set = true
		val = strings.Trim(v, `"`)
		if deletes(attrs) {
			val = ""
		}
	}
	return val, set
}

// deletes reports whether Set-Cookie attributes expire the cookie at once.
func deletes(attrs string) bool {
	for len(attrs) > 0 {
		var a string
		a, attrs, _ = strings.Cut(attrs, ";")
		k, v, _ := strings.Cut(strings.TrimSpace(a), "=")
		switch {
		case strings.EqualFold(k, "max-age"):
			if v = strings.TrimSpace(v); v == "0" || strings.HasPrefix(v, "-") {
				return true
			}
		case strings.EqualFold(k, "expires"):
			if t, err := http.ParseTime(strings.TrimSpace(v)); err == nil && t.Before(time.Unix(86400, 0)) {
				return true
			}
		}
	}
	return false
}
