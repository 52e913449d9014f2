package session

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const (
	cookieA = "abcdefghijklmnopqrstuvwxyz012345"
	cookieB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

type cacheFixture struct {
	c     *Cache
	kr    *Keyring
	clock *clockwork.FakeClock
	store Store
}

func newCacheFixture(t *testing.T, store Store, clock *clockwork.FakeClock) *cacheFixture {
	t.Helper()
	if clock == nil {
		clock = clockwork.NewFakeClockAt(time.Unix(1767225600, 0))
	}
	if store == nil {
		m, err := NewMemory(1000, clock)
		if err != nil {
			t.Fatal(err)
		}
		store = m
	}
	kr := testKeyring(t)
	c, err := NewCache(CacheOptions{Store: store, Keyring: kr, TTL: time.Minute, CoalesceWait: 100 * time.Millisecond, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return &cacheFixture{c: c, kr: kr, clock: clock, store: store}
}

func cookieHeader(v string) http.Header {
	return http.Header{"Cookie": {"csrftoken=x; sessionid=" + v + "; other=y"}}
}

// grantFor is what lanegate_django sends after authenticating cookie.
func (f *cacheFixture) grantFor(cookie, uid string) string {
	now := f.clock.Now()
	return f.kr.Sign(&Claims{Type: TypeGrant, SID: SessionHash(cookie), UserID: uid, AuthHash: "hash-" + uid,
		Expires: now.Add(time.Hour).Unix(), IssuedAt: now.Unix()})
}

func (f *cacheFixture) revokeFor(cookies ...string) string {
	var sids []string
	for _, c := range cookies {
		sids = append(sids, SessionHash(c))
	}
	return f.kr.Sign(&Claims{Type: TypeRevoke, SIDs: sids, IssuedAt: f.clock.Now().Unix()})
}

// roundTrip runs one request through the cache with the given response
// headers and returns its session state and the headers as the client
// would get them.
func (f *cacheFixture) roundTrip(t *testing.T, reqHeader, respHeader http.Header, status int) (*Request, http.Header) {
	t.Helper()
	r := f.c.Begin(context.Background(), reqHeader)
	if respHeader == nil {
		respHeader = http.Header{}
	}
	f.c.Response(context.Background(), r, respHeader, status)
	return r, respHeader
}

func (f *cacheFixture) verifyIdentity(t *testing.T, r *Request) *Claims {
	t.Helper()
	if r.Identity == "" {
		t.Fatal("request forwarded without identity, want one")
	}
	c, err := f.kr.Verify(r.Identity, TypeIdentity, f.clock.Now(), Window{MaxAge: DefaultIdentityMaxAge})
	if err != nil {
		t.Fatalf("identity does not verify: %v", err)
	}
	return c
}

func TestGrantThenIdentity(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	// First request: a miss, forwarded with a grant request.
	r, resp := f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "42")}}, 200)
	if r.Identity != "" || r.GrantRequest == "" {
		t.Fatalf("miss: identity %q grant request %q, want none and one", r.Identity, r.GrantRequest)
	}
	if _, err := f.kr.Verify(r.GrantRequest, TypeGrantRequest, f.clock.Now(), Window{MaxAge: time.Second}); err != nil {
		t.Fatalf("grant request does not verify: %v", err)
	}
	if resp.Get(HeaderGrant) != "" {
		t.Fatal("grant header left in the response to the client")
	}
	// Second request: a hit with a signed identity bound to the cookie.
	r, _ = f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	c := f.verifyIdentity(t, r)
	if c.SID != SessionHash(cookieA) || c.UserID != "42" || c.AuthHash != "hash-42" {
		t.Fatalf("identity claims = %+v", c)
	}
	if r.GrantRequest != "" {
		t.Error("a hit also asked for a grant")
	}
	if s := f.c.Stats(); s.Hits != 1 || s.Misses != 1 || s.Grants != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestGrantOnLoginBindsToNewCookie(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	// A login POST without a cookie: Django sets a new one and grants it.
	resp := http.Header{
		"Set-Cookie": {"csrftoken=z; Path=/", "sessionid=" + cookieB + "; HttpOnly; Path=/; SameSite=Lax"},
		HeaderGrant:  {f.grantFor(cookieB, "7")},
	}
	f.roundTrip(t, http.Header{}, resp, 302)
	r, _ := f.roundTrip(t, cookieHeader(cookieB), nil, 200)
	if c := f.verifyIdentity(t, r); c.UserID != "7" {
		t.Fatalf("uid = %q", c.UserID)
	}
}

func TestGrantRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		req    http.Header
		grant  func(f *cacheFixture) string
		extra  http.Header
		status int
	}{
		{"for another session", cookieHeader(cookieA), func(f *cacheFixture) string { return f.grantFor(cookieB, "1") }, nil, 200},
		{"forged", cookieHeader(cookieA), func(f *cacheFixture) string {
			other, _ := ParseKeyring("k1:" + testSecret0)
			return other.Sign(&Claims{Type: TypeGrant, SID: SessionHash(cookieA), UserID: "1", Expires: f.clock.Now().Add(time.Hour).Unix(), IssuedAt: f.clock.Now().Unix()})
		}, nil, 200},
		{"stale", cookieHeader(cookieA), func(f *cacheFixture) string {
			return f.kr.Sign(&Claims{Type: TypeGrant, SID: SessionHash(cookieA), UserID: "1", Expires: f.clock.Now().Add(time.Hour).Unix(), IssuedAt: f.clock.Now().Add(-time.Minute).Unix()})
		}, nil, 200},
		{"identity token as grant", cookieHeader(cookieA), func(f *cacheFixture) string {
			return f.kr.Sign(&Claims{Type: TypeIdentity, SID: SessionHash(cookieA), UserID: "1", Expires: f.clock.Now().Add(time.Hour).Unix(), IssuedAt: f.clock.Now().Unix()})
		}, nil, 200},
		{"session already expired", cookieHeader(cookieA), func(f *cacheFixture) string {
			return f.kr.Sign(&Claims{Type: TypeGrant, SID: SessionHash(cookieA), UserID: "1", Expires: f.clock.Now().Add(-time.Second).Unix(), IssuedAt: f.clock.Now().Unix()})
		}, nil, 200},
		{"on a 500", cookieHeader(cookieA), func(f *cacheFixture) string { return f.grantFor(cookieA, "1") }, nil, 500},
		{"for the cookie the response deletes", cookieHeader(cookieA), func(f *cacheFixture) string { return f.grantFor(cookieA, "1") },
			http.Header{"Set-Cookie": {`sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/`}}, 302},
		{"revoked in the same response", cookieHeader(cookieA), func(f *cacheFixture) string { return f.grantFor(cookieA, "1") },
			http.Header{HeaderRevoke: nil}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newCacheFixture(t, nil, nil)
			resp := http.Header{HeaderGrant: {tc.grant(f)}}
			for k, v := range tc.extra {
				resp[k] = v
			}
			if _, ok := tc.extra[HeaderRevoke]; ok {
				resp[HeaderRevoke] = []string{f.revokeFor(cookieA)}
			}
			f.roundTrip(t, tc.req, resp, tc.status)
			if len(resp[HeaderGrant]) != 0 || len(resp[HeaderRevoke]) != 0 {
				t.Error("lanegate headers left in the response")
			}
			r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200)
			if r.Identity != "" {
				t.Fatal("refused grant was trusted")
			}
			if s := f.c.Stats(); s.Grants != 0 {
				t.Fatalf("stats = %+v, want no grant stored", s)
			}
		})
	}
}

func TestGrantNeedsGrantRequest(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "1")}}, 200)
	// A hit is forwarded without a grant request; a grant arriving on its
	// response anyway is not believed (nor needed).
	r := f.c.Begin(context.Background(), cookieHeader(cookieA))
	if r.GrantRequest != "" {
		t.Fatal("hit carries a grant request")
	}
	f.c.Response(context.Background(), r, http.Header{HeaderGrant: {f.grantFor(cookieA, "666")}}, 200)
	r, _ = f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	if c := f.verifyIdentity(t, r); c.UserID != "1" {
		t.Fatalf("unrequested grant replaced the entry: uid %q", c.UserID)
	}
}

func TestLogoutRevokes(t *testing.T) {
	for _, tc := range []struct {
		name string
		resp func(f *cacheFixture) http.Header
	}{
		{"cookie deleted", func(*cacheFixture) http.Header {
			return http.Header{"Set-Cookie": {`sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/`}}
		}},
		{"cookie rotated", func(*cacheFixture) http.Header {
			return http.Header{"Set-Cookie": {"sessionid=" + cookieB + "; Path=/"}}
		}},
		{"revoke header", func(f *cacheFixture) http.Header {
			return http.Header{HeaderRevoke: {f.revokeFor(cookieA)}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newCacheFixture(t, nil, nil)
			f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "1")}}, 200)
			r, _ := f.roundTrip(t, cookieHeader(cookieA), tc.resp(f), 302)
			f.verifyIdentity(t, r) // the logout itself was trusted
			r, _ = f.roundTrip(t, cookieHeader(cookieA), nil, 200)
			if r.Identity != "" {
				t.Fatal("identity still trusted after logout")
			}
		})
	}
}

// A grant Django computed before a logout but delivered after it must not
// bring the session back.
func TestGrantRacingRevocationIsRefused(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	slow := f.c.Begin(context.Background(), cookieHeader(cookieA)) // leader
	grant := f.grantFor(cookieA, "1")
	// Meanwhile Django revokes the session in another request's response
	// (another device deleting it, an admin ending it).
	f.roundTrip(t, http.Header{}, http.Header{HeaderRevoke: {f.revokeFor(cookieA)}}, 302)
	f.c.Response(context.Background(), slow, http.Header{HeaderGrant: {grant}}, 200)
	r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	if r.Identity != "" {
		t.Fatal("a grant older than the logout restored the session")
	}
	// After the tombstone the session can be granted again (a new login
	// would cycle the key anyway).
	f.clock.Advance(tombstoneTTL + time.Second)
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "1")}}, 200)
	r, _ = f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	f.verifyIdentity(t, r)
}

func TestTTLBoundsTrust(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "1")}}, 200)
	f.clock.Advance(time.Minute - time.Second)
	if r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200); r.Identity == "" {
		t.Fatal("expired before the TTL")
	}
	f.clock.Advance(time.Second)
	if r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200); r.Identity != "" {
		t.Fatal("trusted past the TTL")
	}
}

func TestSessionExpiryBoundsTrust(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	now := f.clock.Now()
	g := f.kr.Sign(&Claims{Type: TypeGrant, SID: SessionHash(cookieA), UserID: "1", Expires: now.Add(10 * time.Second).Unix(), IssuedAt: now.Unix()})
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {g}}, 200)
	f.clock.Advance(10 * time.Second)
	if r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200); r.Identity != "" {
		t.Fatal("trusted past the session's own expiry")
	}
}

func TestCoalescing(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	leader := f.c.Begin(context.Background(), cookieHeader(cookieA))
	if leader.GrantRequest == "" {
		t.Fatal("first miss did not ask for a grant")
	}
	const followers = 5
	var wg sync.WaitGroup
	got := make(chan *Request, followers)
	for range followers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got <- f.c.Begin(context.Background(), cookieHeader(cookieA))
		}()
	}
	// Each follower arms one timer while it waits.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.clock.BlockUntilContext(ctx, followers); err != nil {
		t.Fatal(err)
	}
	f.c.Response(context.Background(), leader, http.Header{HeaderGrant: {f.grantFor(cookieA, "9")}}, 200)
	wg.Wait()
	close(got)
	for r := range got {
		if r.GrantRequest != "" {
			t.Error("a follower asked for a grant too")
		}
		if c := f.verifyIdentity(t, r); c.UserID != "9" {
			t.Errorf("follower uid %q", c.UserID)
		}
	}
	if s := f.c.Stats(); s.Coalesced != followers || s.Misses != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestCoalescingGivesUpAfterWait(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	leader := f.c.Begin(context.Background(), cookieHeader(cookieA))
	defer f.c.End(leader)
	done := make(chan *Request)
	go func() { done <- f.c.Begin(context.Background(), cookieHeader(cookieA)) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.clock.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(100 * time.Millisecond)
	r := <-done
	if r.Identity != "" || r.GrantRequest != "" {
		t.Fatalf("follower after timeout = %+v, want plain forward", r)
	}
	// The leader ending without a grant lets the next miss lead.
	f.c.End(leader)
	if r := f.c.Begin(context.Background(), cookieHeader(cookieA)); r.GrantRequest == "" {
		t.Fatal("next miss after the leader ended did not lead")
	} else {
		f.c.End(r)
	}
}

func TestCookieParsing(t *testing.T) {
	for _, tc := range []struct {
		header []string
		want   string
		ok     bool
	}{
		{[]string{"sessionid=" + cookieA}, cookieA, true},
		{[]string{"a=b; sessionid=" + cookieA + "; c=d"}, cookieA, true},
		{[]string{"a=b", "sessionid=" + cookieA}, cookieA, true},
		{[]string{`sessionid="` + cookieA + `"`}, cookieA, true},
		{[]string{"xsessionid=" + cookieA}, "", false},
		{[]string{"sessionid=short"}, "short", false},
		{[]string{"sessionid=ABCDEFGHIJKLMNOP"}, "ABCDEFGHIJKLMNOP", false},
		{[]string{"sessionid=" + cookieA + "%00"}, cookieA + "%00", false},
		{nil, "", false},
	} {
		got, ok := SessionCookie(http.Header{"Cookie": tc.header}, "sessionid")
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("SessionCookie(%q) = %q, %v; want %q, %v", tc.header, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNoCookieAsksForGrant(t *testing.T) {
	f := newCacheFixture(t, nil, nil)
	r, _ := f.roundTrip(t, http.Header{"Cookie": {"sessionid=bad"}}, nil, 200)
	if r.GrantRequest == "" || r.Identity != "" {
		t.Fatalf("request without a valid cookie = %+v", r)
	}
	if s := f.c.Stats(); s.NoCookie != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

// failingStore fails every call until healed.
type failingStore struct {
	Store
	mu     sync.Mutex
	broken bool
	calls  int
}

func (s *failingStore) fail() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.broken {
		return errors.New("connection refused")
	}
	return nil
}

func (s *failingStore) Get(ctx context.Context, k Key) (Entry, bool, error) {
	if err := s.fail(); err != nil {
		return Entry{}, false, err
	}
	return s.Store.Get(ctx, k)
}

func (s *failingStore) Put(ctx context.Context, k Key, e Entry, ttl time.Duration) (bool, error) {
	if err := s.fail(); err != nil {
		return false, err
	}
	return s.Store.Put(ctx, k, e, ttl)
}

func TestStoreFailureFailsOpenAndBacksOff(t *testing.T) {
	clock := clockwork.NewFakeClockAt(time.Unix(1767225600, 0))
	mem, _ := NewMemory(100, clock)
	fs := &failingStore{Store: mem}
	f := newCacheFixture(t, fs, clock)
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "1")}}, 200)

	fs.mu.Lock()
	fs.broken = true
	fs.mu.Unlock()
	r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	if r.Identity != "" || r.GrantRequest == "" {
		t.Fatalf("during failure: %+v, want a plain miss", r)
	}
	if h := f.c.Health(); !h.Degraded || h.LastError == "" {
		t.Fatalf("health = %+v, want degraded", h)
	}
	fs.mu.Lock()
	before := fs.calls
	fs.mu.Unlock()
	// Within the backoff the store is not asked at all.
	f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	fs.mu.Lock()
	after := fs.calls
	fs.broken = false
	fs.mu.Unlock()
	if after != before {
		t.Fatalf("store called %d times during backoff", after-before)
	}
	if s := f.c.Stats(); s.Skipped == 0 || s.StoreErrors == 0 {
		t.Fatalf("stats = %+v", s)
	}
	// Recovery: after the backoff the entry is found again.
	f.clock.Advance(failureBackoff)
	r, _ = f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	f.verifyIdentity(t, r)
	if h := f.c.Health(); h.Degraded {
		t.Fatalf("health after recovery = %+v", h)
	}
}

func BenchmarkBeginHitMemory(b *testing.B) {
	mem, _ := NewMemory(1000, nil)
	benchBeginHit(b, mem)
}

// benchBeginHit measures the whole per-request cost of a cache hit over
// store: cookie hash, key HMAC, the store's get, and signing the identity.
func benchBeginHit(b *testing.B, store Store) {
	kr := testKeyring(b)
	c, _ := NewCache(CacheOptions{Store: store, Keyring: kr})
	now := time.Now()
	g := kr.Sign(&Claims{Type: TypeGrant, SID: SessionHash(cookieA), UserID: "42", AuthHash: "h", Expires: now.Add(time.Hour).Unix(), IssuedAt: now.Unix()})
	r := c.Begin(context.Background(), cookieHeader(cookieA))
	c.Response(context.Background(), r, http.Header{HeaderGrant: {g}}, 200)
	h := cookieHeader(cookieA)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r := c.Begin(context.Background(), h)
		if r.Identity == "" {
			b.Fatal("miss")
		}
		c.Response(context.Background(), r, http.Header{}, 200)
	}
}

// FuzzCookieHeaders feeds hostile Cookie and Set-Cookie values to the
// parsers that decide which session a request and a response name.
func FuzzCookieHeaders(f *testing.F) {
	for _, s := range []string{
		"sessionid=" + cookieA,
		"a=b; sessionid=" + cookieA + "; c=d",
		`sessionid="` + cookieA + `"`,
		"sessionid=; sessionid=" + cookieA,
		"sessionid=" + cookieA + "; Max-Age=0; Path=/",
		`sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/`,
		"sessionid=" + cookieA + "; expires=Mon, 01 Jan 2999 00:00:00 GMT",
		"=;;;==;sessionid",
		"sessionid=\x00\xff" + cookieA,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		v, ok := SessionCookie(http.Header{"Cookie": {line}}, "sessionid")
		if ok {
			if !validSessionKey(v) {
				t.Fatalf("SessionCookie(%q) accepted %q, not a session key", line, v)
			}
			if !strings.Contains(line, v) {
				t.Fatalf("SessionCookie(%q) = %q, which the header does not hold", line, v)
			}
		}
		nv, set := setCookieValue(http.Header{"Set-Cookie": {line}}, "sessionid")
		if !set && nv != "" {
			t.Fatalf("setCookieValue(%q) = %q without setting the cookie", line, nv)
		}
		if set && nv != "" && !strings.Contains(line, nv) {
			t.Fatalf("setCookieValue(%q) = %q, which the header does not hold", line, nv)
		}
	})
}

// faultStore wraps a store with failures switched per operation, counts
// revocations, and lets a test hold a Get or a Revoke inside the store.
type faultStore struct {
	Store
	mu                     sync.Mutex
	getErr, putErr, revErr error
	revokes                int
	holdGet, holdRevoke    chan struct{} // when set, the call waits for it to close
	inGet, inRevoke        chan struct{} // signalled (non-blocking) when a call waits
}

var errDown = errors.New("connection refused")

func (s *faultStore) set(fn func(s *faultStore)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s)
}

func (s *faultStore) Get(ctx context.Context, k Key) (Entry, bool, error) {
	s.mu.Lock()
	err, hold, in := s.getErr, s.holdGet, s.inGet
	s.mu.Unlock()
	if hold != nil {
		if in != nil {
			in <- struct{}{}
		}
		<-hold
	}
	if err != nil {
		return Entry{}, false, err
	}
	return s.Store.Get(ctx, k)
}

func (s *faultStore) Put(ctx context.Context, k Key, e Entry, ttl time.Duration) (bool, error) {
	s.mu.Lock()
	err := s.putErr
	s.mu.Unlock()
	if err != nil {
		return false, err
	}
	return s.Store.Put(ctx, k, e, ttl)
}

// Revoke fails without touching the inner store while revErr is set: the
// entry stays, as in a Redis that never saw the write.
func (s *faultStore) Revoke(ctx context.Context, k Key, tombstone time.Duration) error {
	s.mu.Lock()
	s.revokes++
	err, hold, in := s.revErr, s.holdRevoke, s.inRevoke
	s.holdRevoke = nil // only the first call waits: a second one must not hang the test
	s.mu.Unlock()
	if hold != nil {
		if in != nil {
			in <- struct{}{}
		}
		<-hold
	}
	if err != nil {
		return err
	}
	return s.Store.Revoke(ctx, k, tombstone)
}

func (s *faultStore) revokeCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.revokes
}

// awaitSignal receives from ch, failing the test if nothing comes within
// a generous bound (a broken cache must fail the test, not hang it).
func awaitSignal[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func newFaultFixture(t *testing.T) (*cacheFixture, *faultStore, *Memory) {
	t.Helper()
	clock := clockwork.NewFakeClockAt(time.Unix(1767225600, 0))
	mem, err := NewMemory(1000, clock)
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultStore{Store: mem}
	return newCacheFixture(t, fs, clock), fs, mem
}

const (
	cookieC = "cccccccccccccccccccccccccccccccc"
	cookieD = "dddddddddddddddddddddddddddddddd"
)

var logoutHeader = http.Header{"Set-Cookie": {`sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/`}}

// login grants cookie to uid through the cache and checks it is trusted.
func (f *cacheFixture) login(t *testing.T, cookie, uid string) {
	t.Helper()
	f.roundTrip(t, cookieHeader(cookie), http.Header{HeaderGrant: {f.grantFor(cookie, uid)}}, 200)
	r, _ := f.roundTrip(t, cookieHeader(cookie), nil, 200)
	f.verifyIdentity(t, r)
}

// A logout while the store fails must not be forgotten: the store may still
// hold the entry when it answers again (it never saw the revocation), and
// the old cookie must not be trusted then. The tombstone is written as soon
// as the store answers.
func TestRevocationDuringOutageIsKeptAndRetried(t *testing.T) {
	f, fs, mem := newFaultFixture(t)
	f.login(t, cookieA, "1")
	f.login(t, cookieB, "2")

	fs.set(func(s *faultStore) { s.getErr, s.putErr, s.revErr = errDown, errDown, errDown })
	r, _ := f.roundTrip(t, cookieHeader(cookieA), logoutHeader.Clone(), 302)
	if r.Identity != "" {
		t.Fatal("trusted while the store fails")
	}
	if st := f.c.Stats(); st.RevokesPending != 1 || st.Revocations != 0 {
		t.Fatalf("after a failed logout: stats %+v, want 1 revocation pending, none applied", st)
	}
	if _, ok, _ := mem.Get(context.Background(), f.c.keys.Key(SessionHash(cookieA))); !ok {
		t.Fatal("the test store lost the entry; the test proves nothing")
	}

	// The store answers again, with the entry it never saw revoked.
	fs.set(func(s *faultStore) { s.getErr, s.putErr, s.revErr = nil, nil, nil })
	f.clock.Advance(failureBackoff)
	calls := fs.revokeCalls()
	r, _ = f.roundTrip(t, cookieHeader(cookieA), nil, 200)
	if r.Identity != "" {
		t.Fatal("the logged-out cookie was trusted after the store came back")
	}
	if got := fs.revokeCalls() - calls; got != 1 {
		t.Fatalf("revocation retried %d times on the first request after the backoff, want 1", got)
	}
	if _, ok, _ := mem.Get(context.Background(), f.c.keys.Key(SessionHash(cookieA))); ok {
		t.Fatal("the retried revocation did not remove the entry from the store")
	}
	if st := f.c.Stats(); st.RevokesPending != 0 || st.Revocations != 1 {
		t.Fatalf("after the retry: stats %+v, want nothing pending, 1 revocation applied", st)
	}
	// The tombstone is there: a grant signed before the logout is refused
	// by the store now, not just by this instance.
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "1")}}, 200)
	if r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200); r.Identity != "" {
		t.Fatal("a grant after the retried revocation restored the session")
	}
	// Other sessions were never affected.
	r, _ = f.roundTrip(t, cookieHeader(cookieB), nil, 200)
	f.verifyIdentity(t, r)
}

// A store that reads but does not take writes (a Redis replica promoted
// read-only, a timeout on the write only) still answers lookups with the
// entry: the pending key must stay untrusted and ungrantable here, while
// other sessions are served, and the retry must not hammer the store.
func TestPendingRevocationWhileStoreOnlyReads(t *testing.T) {
	f, fs, _ := newFaultFixture(t)
	f.login(t, cookieA, "1")
	f.login(t, cookieB, "2")
	fs.set(func(s *faultStore) { s.revErr = errDown })
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderRevoke: {f.revokeFor(cookieA)}}, 200)
	if st := f.c.Stats(); st.RevokesPending != 1 {
		t.Fatalf("stats %+v, want 1 revocation pending", st)
	}

	f.clock.Advance(failureBackoff)
	for i := range 3 {
		r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200)
		if r.Identity != "" {
			t.Fatalf("lookup %d: a session whose revocation is pending was trusted", i)
		}
	}
	// One retry after the backoff, which failed and backed off again; the
	// lookups after it did not retry.
	if got := fs.revokeCalls(); got != 2 {
		t.Fatalf("revoke calls: got %d, want 2 (the logout, one retry)", got)
	}
	// A fresh grant for the pending session is refused.
	rejected := f.c.Stats().GrantsRejected
	f.clock.Advance(failureBackoff)
	f.roundTrip(t, cookieHeader(cookieA), http.Header{HeaderGrant: {f.grantFor(cookieA, "1")}}, 200)
	if got := f.c.Stats().GrantsRejected - rejected; got != 1 {
		t.Fatalf("grants rejected for the pending session: %d, want 1", got)
	}
	if r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200); r.Identity != "" {
		t.Fatal("a grant for a pending session was trusted")
	}
	// Once no entry can have survived, the key is forgotten.
	f.clock.Advance(f.c.pendingFor())
	f.roundTrip(t, cookieHeader(cookieB), nil, 200)
	if st := f.c.Stats(); st.RevokesPending != 0 {
		t.Fatalf("stats %+v, want the expired revocation dropped", st)
	}
}

// A revocation failing while a lookup of the same session is inside the
// store must win over what that lookup finds.
func TestRevocationFailingDuringLookupWins(t *testing.T) {
	f, fs, _ := newFaultFixture(t)
	f.login(t, cookieA, "1")
	hold, in := make(chan struct{}), make(chan struct{}, 1)
	release := sync.OnceFunc(func() { close(hold) })
	defer release() // a failing test must not leave the lookup waiting
	fs.set(func(s *faultStore) { s.holdGet, s.inGet = hold, in })
	got := make(chan *Request, 1)
	go func() {
		r := f.c.Begin(context.Background(), cookieHeader(cookieA))
		f.c.End(r)
		got <- r
	}()
	awaitSignal(t, in, "the lookup to reach the store")
	fs.set(func(s *faultStore) { s.holdGet, s.revErr = nil, errDown })
	f.roundTrip(t, http.Header{}, http.Header{HeaderRevoke: {f.revokeFor(cookieA)}}, 200)
	release()
	if r := awaitSignal(t, got, "the lookup to return"); r.Identity != "" {
		t.Fatal("a lookup returned an identity for a session revoked while it was in the store")
	}
}

// Only one request at a time retries, and the others do not wait for it.
func TestPendingFlushIsSingle(t *testing.T) {
	f, fs, _ := newFaultFixture(t)
	f.login(t, cookieA, "1")
	f.login(t, cookieB, "2")
	fs.set(func(s *faultStore) { s.revErr = errDown })
	f.roundTrip(t, cookieHeader(cookieA), logoutHeader.Clone(), 302)
	hold, in := make(chan struct{}), make(chan struct{}, 1)
	release := sync.OnceFunc(func() { close(hold) })
	defer release() // a failing test must not leave the retry waiting
	fs.set(func(s *faultStore) { s.revErr, s.holdRevoke, s.inRevoke = nil, hold, in })
	f.clock.Advance(failureBackoff)

	done := make(chan struct{})
	go func() {
		defer close(done)
		r := f.c.Begin(context.Background(), http.Header{})
		f.c.End(r)
	}()
	awaitSignal(t, in, "a request to retry the pending revocation")
	calls := fs.revokeCalls()
	for range 5 {
		r, _ := f.roundTrip(t, cookieHeader(cookieB), nil, 200)
		f.verifyIdentity(t, r)
		if r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200); r.Identity != "" {
			t.Fatal("pending session trusted while its retry runs")
		}
	}
	if got := fs.revokeCalls(); got != calls {
		t.Fatalf("%d more revoke calls while one retry ran, want none", got-calls)
	}
	release()
	awaitSignal(t, done, "the retry to end")
	if st := f.c.Stats(); st.RevokesPending != 0 {
		t.Fatalf("stats %+v, want nothing pending after the retry", st)
	}
}

// When failed revocations overflow the pending set, no session is trusted
// on this instance until none of the forgotten ones can have an entry left.
func TestPendingOverflowDistrustsAll(t *testing.T) {
	f, fs, _ := newFaultFixture(t)
	f.c.maxPending = 2
	core, logs := observer.New(zapcore.WarnLevel)
	f.c.log = zap.New(core)
	for i, c := range []string{cookieA, cookieB, cookieC, cookieD} {
		f.login(t, c, strconv.Itoa(i+1))
	}
	fs.set(func(s *faultStore) { s.revErr = errDown })
	for _, c := range []string{cookieA, cookieB, cookieC} {
		f.roundTrip(t, http.Header{}, http.Header{HeaderRevoke: {f.revokeFor(c)}}, 200)
	}
	if st := f.c.Stats(); st.RevokesPending != 2 || st.RevokesOverflow != 1 {
		t.Fatalf("stats %+v, want 2 pending and 1 overflow", st)
	}
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).FilterMessageSnippet("over the limit").Len(); n != 1 {
		t.Errorf("overflow logged %d times as an error, want 1 (logs: %v)", n, logs.All())
	}
	fs.set(func(s *faultStore) { s.revErr = nil })
	f.clock.Advance(failureBackoff)
	for _, c := range []string{cookieA, cookieB, cookieC, cookieD} {
		if r, _ := f.roundTrip(t, cookieHeader(c), nil, 200); r.Identity != "" {
			t.Fatalf("cookie %s trusted after the pending set overflowed", c[:4])
		}
	}
	if st := f.c.Stats(); st.RevokesPending != 0 {
		t.Fatalf("stats %+v, want the pending revocations written", st)
	}
	// Still nothing trusted just before the end of the period...
	f.clock.Advance(f.c.pendingFor() - 2*failureBackoff)
	f.roundTrip(t, cookieHeader(cookieD), http.Header{HeaderGrant: {f.grantFor(cookieD, "4")}}, 200)
	if r, _ := f.roundTrip(t, cookieHeader(cookieD), nil, 200); r.Identity != "" {
		t.Fatal("trusted before the overflow period ended")
	}
	// ...and trust again after it.
	f.clock.Advance(2 * failureBackoff)
	r, _ := f.roundTrip(t, cookieHeader(cookieD), nil, 200)
	f.verifyIdentity(t, r)
}

// A logout naming its session twice (the deleted cookie and Django's revoke
// header) writes one tombstone, so a failing store costs it one timeout.
func TestLogoutRevokesOnce(t *testing.T) {
	f, fs, _ := newFaultFixture(t)
	f.login(t, cookieA, "1")
	resp := logoutHeader.Clone()
	resp[HeaderRevoke] = []string{f.revokeFor(cookieA)}
	f.roundTrip(t, cookieHeader(cookieA), resp, 302)
	if got := fs.revokeCalls(); got != 1 {
		t.Fatalf("revoke calls: got %d, want 1", got)
	}
	if r, _ := f.roundTrip(t, cookieHeader(cookieA), nil, 200); r.Identity != "" {
		t.Fatal("trusted after logout")
	}
}
