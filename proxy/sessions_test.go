package proxy

// End-to-end tests of the session cache in the proxy: a fake Django that
// speaks the lanegate protocol (deploy/django/lanegate_django/middleware.py)
// with the same keyring sits behind a real Handler, with the memory store or
// a private redis-server. Every name here starts with "sess" (helpers) or
// "TestSession" (tests) so that other test files cannot clash with them.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/session/redistest"
)

// The identity secret lanegate and the fake Django share, and one nobody
// should believe. Both are long enough for session.MinSecretLen.
const (
	sessKeyID       = "test"
	sessSecret      = "lanegate-test-identity-secret-0123456789"
	sessOtherSecret = "another-deployments-identity-secret-98765"
	sessCookie      = "sessionid"
	// sessTagHeader names each test request so the fake's records can be
	// matched to it.
	sessTagHeader = "X-Test-Tag"
)

// sessWindow is how old a token the fake Django accepts: generous, so a
// slow race-detector run does not fail on token age.
var sessWindow = session.Window{MaxAge: 30 * time.Second, Skew: 5 * time.Second}

func sessKeyring(t testing.TB, spec string) *session.Keyring {
	t.Helper()
	kr, err := session.ParseKeyring(spec)
	if err != nil {
		t.Fatalf("ParseKeyring: %v", err)
	}
	return kr
}

// sessIsLanegate reports whether a header name is under lanegate's prefix
// as a WSGI server would see it (case folded, "_" as "-"). It is written
// independently of the code under test on purpose.
func sessIsLanegate(k string) bool {
	return strings.HasPrefix(strings.ToLower(strings.ReplaceAll(k, "_", "-")), "x-lanegate-")
}

// sessLanegateKeys returns the header names of h under lanegate's prefix.
func sessLanegateKeys(h http.Header) []string {
	var out []string
	for k := range h {
		if sessIsLanegate(k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// sessArrival is what the fake Django saw of one request and made of it.
type sessArrival struct {
	Tag          string
	Method, Path string
	Header       http.Header
	// User is the user id the request was served as, "" for anonymous.
	User string
	// Trusted is true when the fake accepted lanegate's identity, so it
	// read no session row; Read when it read the session row.
	Trusted, Read bool
}

// sessDjangoConfig changes how the fake Django answers.
type sessDjangoConfig struct {
	// Signer signs grants and revocations; nil means the shared keyring.
	Signer *session.Keyring
	// GrantOtherSession makes grants name a session other than the one
	// the client holds.
	GrantOtherSession bool
	// KeepCookieOnLogout and NoRevokeOnLogout leave out one of the two
	// ways a logout tells lanegate the session is over.
	KeepCookieOnLogout, NoRevokeOnLogout bool
	// Clock is the fake's time; nil means the real clock.
	Clock clockwork.Clock
}

// sessDjango is a fake Django app with lanegate_django's middleware: a
// user table and a session table in memory.
//
//   - POST /accounts/login/ (form: username) cycles the session: a new
//     sessionid cookie, the old session row deleted and revoked, and a
//     grant for the new session when lanegate asked for one.
//   - POST /accounts/logout/ deletes the session row and the cookie, and
//     revokes the session.
//   - Any other request is served as the user of a valid identity bound to
//     its cookie (the trust path: no session read), or else as the user of
//     its session row, read and counted, granted when lanegate asked.
//     Under /hold/ the answer waits until the test releases the request's
//     tag. With ?fail=N the answer has status N, grant and all; with
//     ?grantas=U a trusted request is answered with a grant nobody asked
//     for, naming user U. With ?leak=1 the answer carries grant and revoke headers
//     whatever the request was, with ?status=N as its status.
//
// Tokens are read the way a WSGI app reads headers: by name case-folded
// and with "_" as "-", so a client's X_Lanegate_Identity counts.
type sessDjango struct {
	kr     *session.Keyring
	signer *session.Keyring
	cfg    sessDjangoConfig
	clock  clockwork.Clock

	reads   atomic.Int64 // session rows read
	trusted atomic.Int64 // requests served on lanegate's identity
	leaks   atomic.Int64 // ?leak=1 answers sent

	mu       sync.Mutex
	users    map[string]string // username → user id
	sessions map[string]string // session key → user id
	arrivals []sessArrival
	changed  chan struct{} // closed and replaced on every arrival
	holds    map[string]*sessHold
	open     bool // every hold released, now and later
}

type sessHold struct {
	ch   chan struct{}
	once sync.Once
}

func (h *sessHold) release() { h.once.Do(func() { close(h.ch) }) }

func sessNewDjango(kr *session.Keyring, cfg sessDjangoConfig) *sessDjango {
	f := &sessDjango{
		kr: kr, signer: cfg.Signer, cfg: cfg, clock: cfg.Clock,
		users:    map[string]string{"alice": "1", "admin": "2", "bob": "3"},
		sessions: map[string]string{},
		changed:  make(chan struct{}),
		holds:    map[string]*sessHold{},
	}
	if f.signer == nil {
		f.signer = kr
	}
	if f.clock == nil {
		f.clock = clockwork.NewRealClock()
	}
	return f
}

// authHash is the user's _auth_user_hash.
func (f *sessDjango) authHash(uid string) string { return "ah-" + uid }

// sessNewKey returns a Django-like session key: 32 characters of [a-z0-9].
func sessNewKey() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b [32]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

// NewSession creates a session row for username directly, as if the user
// had logged in without lanegate in front, and returns its key.
func (f *sessDjango) NewSession(t testing.TB, username string) string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	uid, ok := f.users[username]
	if !ok {
		t.Fatalf("fake Django: no user %q", username)
	}
	key := sessNewKey()
	f.sessions[key] = uid
	return key
}

// Reads and Trusted count session rows read and identities trusted.
func (f *sessDjango) Reads() int64   { return f.reads.Load() }
func (f *sessDjango) Trusted() int64 { return f.trusted.Load() }

// sessHeader returns the value of the header named name as WSGI sees it.
func sessHeader(h http.Header, name string) (string, bool) {
	want := strings.ToLower(name)
	for k, v := range h {
		if strings.ToLower(strings.ReplaceAll(k, "_", "-")) == want && len(v) > 0 {
			return v[0], true
		}
	}
	return "", false
}

// trust is the middleware's _trust: the user of a valid identity bound to
// cookie, for an existing user with an unchanged auth hash. Like Django's
// trust path, it does not read the session row.
func (f *sessDjango) trust(token, cookie string, now time.Time) (string, bool) {
	cl, err := f.kr.Verify(token, session.TypeIdentity, now, sessWindow)
	if err != nil || cookie == "" || cl.SID != session.SessionHash(cookie) || cl.Expires <= now.Unix() || cl.UserID == "" {
		return "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, uid := range f.users {
		if uid == cl.UserID {
			return uid, cl.AuthHash == f.authHash(uid)
		}
	}
	return "", false
}

func (f *sessDjango) grant(sid, uid string, now time.Time) string {
	if f.cfg.GrantOtherSession {
		sid = session.SessionHash(sessNewKey())
	}
	return f.signer.Sign(&session.Claims{
		Type: session.TypeGrant, SID: sid, UserID: uid, AuthHash: f.authHash(uid),
		Expires: now.Add(time.Hour).Unix(), IssuedAt: now.Unix(),
	})
}

func (f *sessDjango) revoke(sids []string, now time.Time) string {
	return f.signer.Sign(&session.Claims{Type: session.TypeRevoke, SIDs: sids, IssuedAt: now.Unix()})
}

func (f *sessDjango) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	_, _ = io.Copy(io.Discard, r.Body)
	now := f.clock.Now()
	a := sessArrival{Tag: r.Header.Get(sessTagHeader), Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone()}
	cookie := ""
	if c, err := r.Cookie(sessCookie); err == nil {
		cookie = c.Value
	}
	var sid string
	if cookie != "" {
		sid = session.SessionHash(cookie)
	}
	h := w.Header()
	q := r.URL.Query()

	if q.Has("leak") {
		f.leaks.Add(1)
		status := http.StatusOK
		if s := q.Get("status"); s != "" {
			status, _ = strconv.Atoi(s)
		}
		grantSID := sid
		if grantSID == "" {
			grantSID = session.SessionHash(sessNewKey())
		}
		h.Set(session.HeaderGrant, f.grant(grantSID, "1", now))
		h.Set(session.HeaderRevoke, f.revoke([]string{session.SessionHash(sessNewKey())}, now))
		// Sent in lower case as is; lanegate reads it canonicalised.
		h["x-lanegate-grant"] = []string{f.grant(grantSID, "1", now)}
		h["x-lanegate-revoke"] = []string{f.revoke([]string{session.SessionHash(sessNewKey())}, now)}
		f.record(a)
		if q.Has("flush") {
			w.WriteHeader(status)
			http.NewResponseController(w).Flush()
		} else {
			w.WriteHeader(status)
		}
		if status != http.StatusNoContent && status != http.StatusNotModified {
			io.WriteString(w, "leaked\n")
		}
		return
	}

	grantRequested := false
	if v, ok := sessHeader(r.Header, session.HeaderGrantRequest); ok {
		if _, err := f.kr.Verify(v, session.TypeGrantRequest, now, sessWindow); err == nil {
			grantRequested = true
		}
	}
	var revoked []string
	uid := ""
	if v, ok := sessHeader(r.Header, session.HeaderIdentity); ok {
		if u, ok := f.trust(v, cookie, now); ok {
			uid, a.Trusted = u, true
			f.trusted.Add(1)
		} else if sid != "" {
			revoked = append(revoked, sid)
		}
	}
	read := func() string {
		a.Read = true
		f.reads.Add(1)
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.sessions[cookie]
	}
	granted := ""
	status, body := http.StatusOK, ""

	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/accounts/login/":
		f.mu.Lock()
		u, ok := f.users[r.PostForm.Get("username")]
		f.mu.Unlock()
		if !ok {
			body = "bad credentials\n"
			break
		}
		if cookie != "" {
			// cycle_key: the old row goes, and with it the old sid.
			f.mu.Lock()
			delete(f.sessions, cookie)
			f.mu.Unlock()
			revoked = append(revoked, sid)
		}
		key := sessNewKey()
		f.mu.Lock()
		f.sessions[key] = u
		f.mu.Unlock()
		uid = u
		http.SetCookie(w, &http.Cookie{Name: sessCookie, Value: key, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		if grantRequested {
			granted = session.SessionHash(key)
			h.Set(session.HeaderGrant, f.grant(granted, u, now))
		}
		h.Set("Location", "/private/")
		status = http.StatusFound

	case r.Method == http.MethodPost && r.URL.Path == "/accounts/logout/":
		if cookie != "" {
			if uid == "" {
				read() // logout() flushes the session it loads
			}
			f.mu.Lock()
			delete(f.sessions, cookie)
			f.mu.Unlock()
			if !f.cfg.NoRevokeOnLogout {
				revoked = append(revoked, sid)
			}
			if !f.cfg.KeepCookieOnLogout {
				h.Add("Set-Cookie", sessCookie+`=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; SameSite=Lax`)
			}
		}
		uid = ""
		h.Set("Location", "/")
		status = http.StatusFound

	default:
		if uid == "" && cookie != "" {
			uid = read()
			switch {
			case uid == "":
				revoked = append(revoked, sid) // unknown to Django: anonymous
			case grantRequested:
				granted = sid
				h.Set(session.HeaderGrant, f.grant(sid, uid, now))
			}
		} else if u := q.Get("grantas"); u != "" && a.Trusted {
			h.Set(session.HeaderGrant, f.grant(sid, u, now))
		}
		if s := q.Get("fail"); s != "" {
			status, _ = strconv.Atoi(s)
		}
		if uid != "" {
			body = "user " + uid + "\n"
		} else {
			body = "anonymous\n"
		}
	}

	revoked = slices.DeleteFunc(revoked, func(s string) bool { return s == granted })
	if len(revoked) > 0 {
		h.Set(session.HeaderRevoke, f.revoke(revoked, now))
	}
	a.User = uid
	f.record(a)
	if strings.HasPrefix(r.URL.Path, "/hold/") {
		select {
		case <-f.gate(a.Tag):
		case <-r.Context().Done():
			return
		}
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func (f *sessDjango) record(a sessArrival) {
	f.mu.Lock()
	f.arrivals = append(f.arrivals, a)
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *sessDjango) hold(tag string) *sessHold {
	h, ok := f.holds[tag]
	if !ok {
		h = &sessHold{ch: make(chan struct{})}
		f.holds[tag] = h
		if f.open {
			h.release()
		}
	}
	return h
}

func (f *sessDjango) gate(tag string) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hold(tag).ch
}

// Release lets the held request tagged tag answer, now or when it comes.
func (f *sessDjango) Release(tag string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hold(tag).release()
}

// ReleaseAll lets every held request answer, and every later one. Tests
// that hold requests defer it, so a failing test does not leave a request
// the servers' Close would wait for.
func (f *sessDjango) ReleaseAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.open = true
	for _, h := range f.holds {
		h.release()
	}
}

// Arrivals returns what the fake saw, in order.
func (f *sessDjango) Arrivals() []sessArrival {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.arrivals)
}

// Find returns the arrival tagged tag and its position.
func (f *sessDjango) Find(tag string) (sessArrival, int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.find(tag)
}

func (f *sessDjango) find(tag string) (sessArrival, int, bool) {
	for i, a := range f.arrivals {
		if a.Tag == tag {
			return a, i, true
		}
	}
	return sessArrival{}, -1, false
}

// Await waits until a request tagged tag has reached the fake.
func (f *sessDjango) Await(t testing.TB, tag string) sessArrival {
	t.Helper()
	timer := time.NewTimer(testTimeout)
	defer timer.Stop()
	for {
		f.mu.Lock()
		a, _, ok := f.find(tag)
		ch := f.changed
		f.mu.Unlock()
		if ok {
			return a
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("request %q did not reach the upstream within %s", tag, testTimeout)
		}
	}
}

// Arrival returns the arrival tagged tag, failing the test without one.
func (f *sessDjango) Arrival(t testing.TB, tag string) sessArrival {
	t.Helper()
	a, _, ok := f.Find(tag)
	if !ok {
		t.Fatalf("request %q never reached the upstream", tag)
	}
	return a
}

// sessStack is a Handler with a session cache (or none), its metrics and
// its admin endpoints, built in the order cmd/lanegate builds them.
type sessStack struct {
	*testProxy
	// Cache is nil when the session cache is off.
	Cache *session.Cache
	// NC is Client without following redirects, so tests see 302s.
	NC    *http.Client
	Admin *httptest.Server
}

// sessSetup says which session cache a stack gets.
type sessSetup struct {
	// Store is the cache's store, closed when the test ends; nil turns
	// the session cache off.
	Store     session.Store
	StoreName string
	Keyring   *session.Keyring
	Clock     clockwork.Clock
}

func sessNewStack(t testing.TB, upstream string, limits admission.Limits, opts Options, setup sessSetup) *sessStack {
	t.Helper()
	p := testNewParts(t, upstream, limits, opts)
	ctrl, opts, reg, m, log, logs := p.Ctrl, p.Opts, p.Reg, p.Metrics, p.Log, p.Logs
	aopts := admin.Options{Token: testAdminToken, Gatherer: reg, Upstream: opts.Upstream, ReadyTimeout: testTimeout}
	var cache *session.Cache
	if setup.Store != nil {
		// Registered before the servers' cleanup, so it runs after it.
		store := setup.Store
		t.Cleanup(func() {
			if err := store.Close(); err != nil {
				t.Errorf("closing the session store: %v", err)
			}
		})
		var err error
		cache, err = session.NewCache(session.CacheOptions{
			Store: store, Keyring: setup.Keyring, Clock: setup.Clock,
			Log: log.Named("session"), Observer: m,
		})
		if err != nil {
			t.Fatalf("NewCache: %v", err)
		}
		if err := m.RegisterSessions(reg, cache); err != nil {
			t.Fatalf("RegisterSessions: %v", err)
		}
		opts.Sessions = cache
		aopts.Sessions, aopts.SessionStore = cache, setup.StoreName
	}
	h, err := New(ctrl, opts, log, m)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(h)
	admin := httptest.NewServer(admin.New(h, ctrl, aopts, log))
	t.Cleanup(func() {
		admin.Close()
		srv.Close()
		h.Close()
	})
	c := srv.Client()
	c.Timeout = 3 * testTimeout
	nc := *c
	nc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &sessStack{
		testProxy: &testProxy{Ctrl: ctrl, Handler: h, Server: srv, Client: c, Reg: reg, Metrics: m, Logs: logs},
		Cache:     cache, NC: &nc, Admin: admin,
	}
}

// sessMemory is the setup of a memory-store cache, or of none when on is
// false.
func sessMemory(t testing.TB, kr *session.Keyring, on bool) sessSetup {
	t.Helper()
	if !on {
		return sessSetup{}
	}
	m, err := session.NewMemory(1000, nil)
	if err != nil {
		t.Fatalf("NewMemory: %v", err)
	}
	return sessSetup{Store: m, StoreName: "memory", Keyring: kr}
}

// sessRedis opens a Redis store on url.
func sessRedis(t testing.TB, url string) *session.Redis {
	t.Helper()
	r, err := session.NewRedis(session.RedisOptions{URL: url, Timeout: 500 * time.Millisecond, PoolSize: 4})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	return r
}

// sessRequest builds a request with the session cookie and tag, either of
// them left out when "". A body is sent as a form.
func sessRequest(t testing.TB, method, u, cookie, tag, form string) *http.Request {
	t.Helper()
	var body io.Reader
	if form != "" {
		body = strings.NewReader(form)
	}
	req := testRequest(t, method, u, nil, body)
	if form != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != "" {
		req.Header.Set("Cookie", "csrftoken=abc; "+sessCookie+"="+cookie)
	}
	if tag != "" {
		req.Header.Set(sessTagHeader, tag)
	}
	return req
}

// sessFetch sends req and requires a response.
func sessFetch(t testing.TB, c *http.Client, req *http.Request) testResult {
	t.Helper()
	res := testDo(c, req)
	if res.Err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, res.Err)
	}
	return res
}

// sessGet fetches path through s with cookie, and checks that no lanegate
// header reached the client.
func sessGet(t testing.TB, s *sessStack, path, cookie, tag string) testResult {
	t.Helper()
	res := sessFetch(t, s.NC, sessRequest(t, http.MethodGet, s.Server.URL+path, cookie, tag, ""))
	if k := sessLanegateKeys(res.Resp.Header); len(k) > 0 {
		t.Errorf("GET %s: the client got lanegate headers %v", path, k)
	}
	return res
}

// sessLogin logs username in through s, sending cookie when not "", and
// returns the new session cookie.
func sessLogin(t testing.TB, s *sessStack, username, cookie, tag string) string {
	t.Helper()
	res := sessFetch(t, s.NC, sessRequest(t, http.MethodPost, s.Server.URL+"/accounts/login/", cookie, tag, "username="+username))
	testStatus(t, res, http.StatusFound)
	if k := sessLanegateKeys(res.Resp.Header); len(k) > 0 {
		t.Errorf("login: the client got lanegate headers %v", k)
	}
	for _, c := range res.Resp.Cookies() {
		if c.Name == sessCookie && c.Value != "" {
			return c.Value
		}
	}
	t.Fatalf("login: no %s cookie in %q", sessCookie, res.Resp.Header.Values("Set-Cookie"))
	return ""
}

// sessLogout logs the session out through s.
func sessLogout(t testing.TB, s *sessStack, cookie, tag string) testResult {
	t.Helper()
	res := sessFetch(t, s.NC, sessRequest(t, http.MethodPost, s.Server.URL+"/accounts/logout/", cookie, tag, "x=1"))
	testStatus(t, res, http.StatusFound)
	if k := sessLanegateKeys(res.Resp.Header); len(k) > 0 {
		t.Errorf("logout: the client got lanegate headers %v", k)
	}
	return res
}

// sessWantBody fails the test unless res is a 200 with body want.
func sessWantBody(t testing.TB, res testResult, want string) {
	t.Helper()
	testStatus(t, res, http.StatusOK)
	if string(res.Body) != want {
		t.Errorf("body: got %q, want %q", res.Body, want)
	}
}

// sessIdentity checks that a carried exactly one identity, valid at now,
// for uid and bound to cookie.
func sessIdentity(t testing.TB, kr *session.Keyring, a sessArrival, cookie, uid string, now time.Time) {
	t.Helper()
	vals := a.Header[session.HeaderIdentity]
	if len(vals) != 1 {
		t.Errorf("request %q: got identity headers %q, want exactly one", a.Tag, vals)
		return
	}
	cl, err := kr.Verify(vals[0], session.TypeIdentity, now, sessWindow)
	if err != nil {
		t.Errorf("request %q: identity does not verify: %v", a.Tag, err)
		return
	}
	if cl.SID != session.SessionHash(cookie) || cl.UserID != uid || cl.AuthHash != "ah-"+uid {
		t.Errorf("request %q: identity claims %+v, want sid of the cookie, uid %q, ah %q", a.Tag, cl, uid, "ah-"+uid)
	}
	if !a.Trusted || a.Read {
		t.Errorf("request %q: fake Django trusted=%v read=%v, want trusted without a session read", a.Tag, a.Trusted, a.Read)
	}
}

// sessNoIdentity checks that a carried no identity in any spelling.
func sessNoIdentity(t testing.TB, a sessArrival) {
	t.Helper()
	if v, ok := sessHeader(a.Header, session.HeaderIdentity); ok {
		t.Errorf("request %q: reached the upstream with identity %q, want none", a.Tag, v)
	}
	if a.Trusted {
		t.Errorf("request %q: fake Django trusted it, want the normal path", a.Tag)
	}
}

// sessMetrics scrapes s's /metrics.
func sessMetrics(t testing.TB, s *sessStack) map[string]float64 {
	t.Helper()
	return testMetrics(t, s.Admin.Client(), s.Admin.URL+"/metrics", map[string]string{"Authorization": "Bearer " + testAdminToken})
}

// sessSum adds up every series of the metric name.
func sessSum(m map[string]float64, name string) float64 {
	sum := 0.0
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

// sessWantMetrics checks series values.
func sessWantMetrics(t testing.TB, m map[string]float64, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		if got, ok := m[k]; !ok || got != w {
			t.Errorf("%s: got %v (present %v), want %v", k, got, ok, w)
		}
	}
}

// sessAdmin fetches an admin endpoint of s.
func sessAdmin(t testing.TB, s *sessStack, path string) testResult {
	t.Helper()
	return testFetch(t, s.Admin.Client(), http.MethodGet, s.Admin.URL+path, map[string]string{"Authorization": "Bearer " + testAdminToken}, nil)
}

// sessStatus fetches and decodes /status.
func sessStatus(t testing.TB, s *sessStack) (admin.Status, string) {
	t.Helper()
	res := sessAdmin(t, s, "/status")
	testStatus(t, res, http.StatusOK)
	var st admin.Status
	if err := json.Unmarshal(res.Body, &st); err != nil {
		t.Fatalf("/status %q: %v", res.Body, err)
	}
	return st, string(res.Body)
}

// sessWaitIdle waits until nothing is in flight or queued, anonymous or
// not.
func sessWaitIdle(t testing.TB, ctrl *admission.Controller) {
	t.Helper()
	testWaitFor(t, "no request in flight or queued", func() bool {
		s := ctrl.Snapshot()
		if s.InFlight != 0 || s.AnonInFlight != 0 || s.AnonQueued != 0 {
			return false
		}
		for _, l := range s.Lanes {
			if l.InFlight != 0 || l.Queued != 0 {
				return false
			}
		}
		return true
	})
}

// TestSessionClientHeadersNeverReachUpstream sends lanegate's headers from
// the client, in several spellings, among them a validly signed identity
// for the admin user replayed against alice's session: none may reach the
// app, whether the session cache is on or off.
func TestSessionClientHeadersNeverReachUpstream(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(map[bool]string{false: "cache off", true: "cache on"}[on], func(t *testing.T) {
			kr := sessKeyring(t, sessKeyID+":"+sessSecret)
			f := sessNewDjango(kr, sessDjangoConfig{})
			up := testUpstream(t, f)
			s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, on))
			cookie := f.NewSession(t, "alice")

			now := time.Now()
			forged := kr.Sign(&session.Claims{
				Type: session.TypeIdentity, SID: session.SessionHash(cookie), UserID: "2", AuthHash: "ah-2",
				Expires: now.Add(time.Hour).Unix(), IssuedAt: now.Unix(),
			})
			// Older than lanegate's own would be, so the two never coincide.
			clientGR := kr.Sign(&session.Claims{Type: session.TypeGrantRequest, IssuedAt: now.Unix() - 3})
			sent := map[string]string{
				"X-Lanegate-Identity":      forged,
				"X-Lanegate-Grant-Request": clientGR,
				"x-lanegate-anything":      "1",
				"X_Lanegate_Identity":      forged,
				"x_lanegate_grant_request": clientGR,
				"X-LANEGATE-REVOKE":        "v1.x.y.z",
				"X-Lanegate-Grant":         "v1.x.y.z",
			}
			clientValues := map[string]bool{forged: true, clientGR: true, "1": true, "v1.x.y.z": true}

			for i := range 2 {
				tag := "req" + strconv.Itoa(i)
				req := sessRequest(t, http.MethodGet, s.Server.URL+"/private/", cookie, tag, "")
				for k, v := range sent {
					req.Header[k] = []string{v} // as spelt, not canonicalised
				}
				res := sessFetch(t, s.NC, req)
				// Served as alice (read or trusted), never as the admin.
				sessWantBody(t, res, "user 1\n")
				a := f.Arrival(t, tag)
				for _, k := range sessLanegateKeys(a.Header) {
					if !on {
						t.Errorf("request %d: header %s: %q reached the upstream with the cache off", i, k, a.Header[k])
						continue
					}
					if k != session.HeaderIdentity && k != session.HeaderGrantRequest {
						t.Errorf("request %d: header %s: %q reached the upstream", i, k, a.Header[k])
						continue
					}
					if len(a.Header[k]) != 1 || clientValues[a.Header[k][0]] {
						t.Errorf("request %d: header %s: got %q, want lanegate's one value", i, k, a.Header[k])
					}
				}
				if !on {
					continue
				}
				// First lanegate asks for a grant, then it vouches for alice.
				if i == 0 {
					if a.Trusted || !a.Read {
						t.Errorf("request 0: trusted=%v read=%v, want the session read", a.Trusted, a.Read)
					}
					gr := a.Header[session.HeaderGrantRequest]
					if len(gr) != 1 {
						t.Fatalf("request 0: grant requests %q, want lanegate's", gr)
					}
					if _, err := kr.Verify(gr[0], session.TypeGrantRequest, time.Now(), sessWindow); err != nil {
						t.Errorf("request 0: lanegate's grant request does not verify: %v", err)
					}
				} else {
					sessIdentity(t, kr, a, cookie, "1", time.Now())
				}
			}
			wantTrusted := map[bool]int64{false: 0, true: 1}[on]
			if got := f.Trusted(); got != wantTrusted {
				t.Errorf("fake Django trusted %d identities, want %d", got, wantTrusted)
			}
			sessWaitIdle(t, s.Ctrl)
		})
	}
}

// TestSessionUpstreamHeadersNeverReachClient has the app answer with grant
// and revoke headers on every kind of response: none reaches the client,
// with the session cache on or off, on bypassed and refused paths too.
func TestSessionUpstreamHeadersNeverReachClient(t *testing.T) {
	tests := []struct {
		name, method, path string
		cookie             bool
		status             int
	}{
		{"200", http.MethodGet, "/private/?leak=1", true, http.StatusOK},
		{"200 without cookie", http.MethodGet, "/private/?leak=1", false, http.StatusOK},
		{"headers flushed first", http.MethodGet, "/private/?leak=1&flush=1", true, http.StatusOK},
		{"302", http.MethodGet, "/private/?leak=1&status=302", true, http.StatusFound},
		{"204", http.MethodGet, "/private/?leak=1&status=204", true, http.StatusNoContent},
		{"304", http.MethodGet, "/private/?leak=1&status=304", true, http.StatusNotModified},
		{"404", http.MethodGet, "/private/?leak=1&status=404", true, http.StatusNotFound},
		{"500", http.MethodGet, "/private/?leak=1&status=500", true, http.StatusInternalServerError},
		{"HEAD", http.MethodHead, "/private/?leak=1", true, http.StatusOK},
		{"login lane", http.MethodPost, "/accounts/login/?leak=1", false, http.StatusOK},
		{"export lane", http.MethodGet, "/reports/x?leak=1", true, http.StatusOK},
		{"bypassed", http.MethodGet, "/static/app.css?leak=1", true, http.StatusOK},
	}
	for _, on := range []bool{false, true} {
		t.Run(map[bool]string{false: "cache off", true: "cache on"}[on], func(t *testing.T) {
			kr := sessKeyring(t, sessKeyID+":"+sessSecret)
			f := sessNewDjango(kr, sessDjangoConfig{})
			up := testUpstream(t, f)
			s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, on))
			cookie := f.NewSession(t, "alice")
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					c, form := "", ""
					if tt.cookie {
						c = cookie
					}
					if tt.method == http.MethodPost {
						form = "username=nobody"
					}
					before := f.leaks.Load()
					res := sessFetch(t, s.NC, sessRequest(t, tt.method, s.Server.URL+tt.path, c, tt.name, form))
					testStatus(t, res, tt.status)
					if f.leaks.Load() != before+1 {
						t.Fatalf("the fake sent %d leaking answers, want 1", f.leaks.Load()-before)
					}
					if k := sessLanegateKeys(res.Resp.Header); len(k) > 0 {
						for _, name := range k {
							t.Errorf("the client got %s: %q", name, res.Resp.Header[name])
						}
					}
				})
			}
			sessWaitIdle(t, s.Ctrl)
		})
	}
}

// TestSessionLoginThenTrusted logs in through lanegate: the login's grant
// is learnt, so every later request of the session reaches the app with a
// valid identity bound to its cookie and costs the app no session read.
func TestSessionLoginThenTrusted(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	f := sessNewDjango(kr, sessDjangoConfig{})
	up := testUpstream(t, f)
	s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, true))

	cookie := sessLogin(t, s, "alice", "", "login")
	login := f.Arrival(t, "login")
	if gr := login.Header[session.HeaderGrantRequest]; len(gr) != 1 {
		t.Fatalf("login reached the app with grant requests %q, want one", gr)
	}
	const n = 5
	for i := range n {
		tag := "get" + strconv.Itoa(i)
		sessWantBody(t, sessGet(t, s, "/private/", cookie, tag), "user 1\n")
		a := f.Arrival(t, tag)
		sessIdentity(t, kr, a, cookie, "1", time.Now())
		if gr := a.Header[session.HeaderGrantRequest]; gr != nil {
			t.Errorf("request %s: got grant request %q along with an identity, want none", tag, gr)
		}
	}
	if got := f.Reads(); got != 0 {
		t.Errorf("fake Django read the session %d times, want 0: the login's grant should serve all %d requests", got, n)
	}
	if got := f.Trusted(); got != n {
		t.Errorf("fake Django trusted %d requests, want %d", got, n)
	}
	sessWantMetrics(t, sessMetrics(t, s), map[string]float64{
		`lanegate_session_lookups_total{result="hit"}`:       n,
		`lanegate_session_lookups_total{result="miss"}`:      0,
		`lanegate_session_lookups_total{result="no_cookie"}`: 1,
		`lanegate_session_grants_total{result="stored"}`:     1,
		`lanegate_session_grants_total{result="rejected"}`:   0,
	})
	sessWaitIdle(t, s.Ctrl)
}

// TestSessionLogoutRevokes logs out through lanegate: the very next request
// with the old cookie carries no identity and is admitted as anonymous,
// whether Django said so by deleting the cookie, by a revocation, or both.
func TestSessionLogoutRevokes(t *testing.T) {
	tests := []struct {
		name string
		cfg  sessDjangoConfig
	}{
		{"cookie deleted and session revoked", sessDjangoConfig{}},
		{"session revoked only", sessDjangoConfig{KeepCookieOnLogout: true}},
		{"cookie deleted only", sessDjangoConfig{NoRevokeOnLogout: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr := sessKeyring(t, sessKeyID+":"+sessSecret)
			f := sessNewDjango(kr, tt.cfg)
			defer f.ReleaseAll()
			up := testUpstream(t, f)
			s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, true))
			cookie := sessLogin(t, s, "alice", "", "login")

			// held runs a held request of the session and checks how it
			// was admitted while it is in flight.
			held := func(tag string, wantAnon int) testResult {
				t.Helper()
				ch := testGo(s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/hold/", cookie, tag, ""))
				f.Await(t, tag)
				snap := s.Ctrl.Snapshot()
				if snap.InFlight != 1 || snap.AnonInFlight != wantAnon {
					t.Errorf("%s in flight: in_flight %d, anonymous %d; want 1, %d", tag, snap.InFlight, snap.AnonInFlight, wantAnon)
				}
				f.Release(tag)
				return testReceive(t, ch)
			}
			// While logged in the session is authenticated...
			sessWantBody(t, held("before", 0), "user 1\n")
			sessIdentity(t, kr, f.Arrival(t, "before"), cookie, "1", time.Now())

			res := sessLogout(t, s, cookie, "logout")
			sessIdentity(t, kr, f.Arrival(t, "logout"), cookie, "1", time.Now())
			if !tt.cfg.KeepCookieOnLogout && !strings.Contains(strings.Join(res.Resp.Header.Values("Set-Cookie"), "\n"), sessCookie+`=""`) {
				t.Errorf("logout: Set-Cookie %q, want the cookie's deletion passed on", res.Resp.Header.Values("Set-Cookie"))
			}

			// ...and the very next request with the old cookie is not.
			sessWantBody(t, held("after", 1), "anonymous\n")
			sessNoIdentity(t, f.Arrival(t, "after"))

			m := sessMetrics(t, s)
			if got := m[`lanegate_session_revocations_total{result="applied"}`]; got < 1 {
				t.Errorf("revocations applied: got %v, want at least 1", got)
			}
			sessWantMetrics(t, m, map[string]float64{`lanegate_session_lookups_total{result="hit"}`: 2})
			sessWaitIdle(t, s.Ctrl)
		})
	}
}

// TestSessionForgedGrantNotLearnt has the app answer with grants lanegate
// must not believe: signed with another secret (under the same key id or
// another), or signed right but naming another session. None is stored,
// so no later request carries an identity.
func TestSessionForgedGrantNotLearnt(t *testing.T) {
	tests := []struct {
		name   string
		signer string
		other  bool
	}{
		{"another secret, same key id", sessKeyID + ":" + sessOtherSecret, false},
		{"another secret and key id", "rogue:" + sessOtherSecret, false},
		{"right secret, another session", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr := sessKeyring(t, sessKeyID+":"+sessSecret)
			cfg := sessDjangoConfig{GrantOtherSession: tt.other}
			if tt.signer != "" {
				cfg.Signer = sessKeyring(t, tt.signer)
			}
			f := sessNewDjango(kr, cfg)
			up := testUpstream(t, f)
			s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, true))

			cookie := sessLogin(t, s, "alice", "", "login")
			for i := range 2 {
				tag := "get" + strconv.Itoa(i)
				sessWantBody(t, sessGet(t, s, "/private/", cookie, tag), "user 1\n")
				a := f.Arrival(t, tag)
				sessNoIdentity(t, a)
				if !a.Read {
					t.Errorf("%s: the fake did not read the session", tag)
				}
			}
			if got := f.Reads(); got != 2 {
				t.Errorf("fake Django read the session %d times, want 2", got)
			}
			sessWantMetrics(t, sessMetrics(t, s), map[string]float64{
				`lanegate_session_grants_total{result="stored"}`:   0,
				`lanegate_session_grants_total{result="rejected"}`: 3,
				`lanegate_session_lookups_total{result="hit"}`:     0,
				`lanegate_session_lookups_total{result="miss"}`:    2,
			})
			sessWaitIdle(t, s.Ctrl)
		})
	}
}

// TestSessionGrantsNotBelieved has the app answer with grants, signed
// right and naming the client's session, that lanegate must still not
// store: one on a 5xx answer, one on a request lanegate asked no grant for.
func TestSessionGrantsNotBelieved(t *testing.T) {
	t.Run("on a 5xx answer", func(t *testing.T) {
		kr := sessKeyring(t, sessKeyID+":"+sessSecret)
		f := sessNewDjango(kr, sessDjangoConfig{})
		up := testUpstream(t, f)
		s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, true))
		cookie := f.NewSession(t, "alice")

		res := sessGet(t, s, "/private/?fail=503", cookie, "failed")
		testStatus(t, res, http.StatusServiceUnavailable)
		if g := f.Arrival(t, "failed").Header[session.HeaderGrantRequest]; len(g) != 1 {
			t.Fatalf("the failed request carried grant requests %q, want one", g)
		}
		sessWantBody(t, sessGet(t, s, "/private/", cookie, "next"), "user 1\n")
		sessNoIdentity(t, f.Arrival(t, "next"))
		// The 200's grant is stored: the next request is trusted.
		sessWantBody(t, sessGet(t, s, "/private/", cookie, "then"), "user 1\n")
		sessIdentity(t, kr, f.Arrival(t, "then"), cookie, "1", time.Now())
		sessWantMetrics(t, sessMetrics(t, s), map[string]float64{
			`lanegate_session_grants_total{result="stored"}`:   1,
			`lanegate_session_grants_total{result="rejected"}`: 1,
		})
		sessWaitIdle(t, s.Ctrl)
	})
	t.Run("not asked for", func(t *testing.T) {
		kr := sessKeyring(t, sessKeyID+":"+sessSecret)
		f := sessNewDjango(kr, sessDjangoConfig{})
		up := testUpstream(t, f)
		s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, true))
		cookie := sessLogin(t, s, "alice", "", "login")

		// A trusted request, so lanegate asked for no grant; the answer
		// says the session is the admin's.
		sessWantBody(t, sessGet(t, s, "/private/?grantas=2", cookie, "trusted"), "user 1\n")
		a := f.Arrival(t, "trusted")
		sessIdentity(t, kr, a, cookie, "1", time.Now())
		if g := a.Header[session.HeaderGrantRequest]; g != nil {
			t.Fatalf("the trusted request carried grant requests %q, want none", g)
		}
		sessWantBody(t, sessGet(t, s, "/private/", cookie, "next"), "user 1\n")
		sessIdentity(t, kr, f.Arrival(t, "next"), cookie, "1", time.Now())
		sessWantMetrics(t, sessMetrics(t, s), map[string]float64{
			`lanegate_session_grants_total{result="stored"}`:   1,
			`lanegate_session_grants_total{result="rejected"}`: 1,
		})
		sessWaitIdle(t, s.Ctrl)
	})
}

// TestSessionLoginRequired redirects GETs and HEADs of login-required paths
// without a session cookie to the login page at the edge, and forwards
// everything else.
func TestSessionLoginRequired(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	f := sessNewDjango(kr, sessDjangoConfig{})
	up := testUpstream(t, f)
	opts := Options{LoginRequired: []string{"/private/"}, LoginURL: "/accounts/login/"}
	s := sessNewStack(t, up.URL, testLimits(), opts, sessMemory(t, kr, true))
	real := f.NewSession(t, "alice")

	const target = "/private/report?a=1&b=x%20y&next=/evil"
	tests := []struct {
		name, method, path, cookieHeader string
		redirect                         bool
	}{
		{"GET without cookie", http.MethodGet, target, "", true},
		{"HEAD without cookie", http.MethodHead, target, "", true},
		{"directory itself", http.MethodGet, "/private/", "", true},
		{"directory without slash", http.MethodGet, "/private", "", true},
		{"other cookies only", http.MethodGet, target, "csrftoken=abc; xsessionid=abc; sessionidx=abc", true},
		{"bogus session cookie", http.MethodGet, target, "sessionid=bogus", false},
		{"invalid session cookie", http.MethodGet, target, "sessionid=NOT-A-KEY!", false},
		{"real session cookie", http.MethodGet, target, "csrftoken=abc; sessionid=" + real, false},
		{"POST without cookie", http.MethodPost, target, "", false},
		{"other path", http.MethodGet, "/public/?a=1", "", false},
		{"prefix of another path", http.MethodGet, "/privatex/", "", false},
	}
	redirects := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form := ""
			if tt.method == http.MethodPost {
				form = "x=1"
			}
			req := sessRequest(t, tt.method, s.Server.URL+tt.path, "", tt.name, form)
			if tt.cookieHeader != "" {
				req.Header.Set("Cookie", tt.cookieHeader)
			}
			res := sessFetch(t, s.NC, req)
			_, _, reached := f.Find(tt.name)
			if !tt.redirect {
				testStatus(t, res, http.StatusOK)
				if !reached {
					t.Errorf("the upstream never saw the request")
				}
				return
			}
			redirects++
			testStatus(t, res, http.StatusFound)
			if reached {
				t.Errorf("the upstream saw the request, want it answered at the edge")
			}
			want := "/accounts/login/?next=" + url.QueryEscape(tt.path)
			if got := res.Resp.Header.Get("Location"); got != want {
				t.Errorf("Location: got %q, want %q", got, want)
			}
			if cc := res.Resp.Header.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
				t.Errorf("Cache-Control: got %q, want no-store", cc)
			}
		})
	}
	m := sessMetrics(t, s)
	sessWantMetrics(t, m, map[string]float64{`lanegate_requests_total{decision="login_redirect",lane="core"}`: float64(redirects)})

	t.Run("login URL with a query", func(t *testing.T) {
		opts := Options{LoginRequired: []string{"/private/"}, LoginURL: "/login/?lang=en"}
		s := sessNewStack(t, up.URL, testLimits(), opts, sessMemory(t, kr, true))
		res := sessFetch(t, s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/private/x?y=1", "", "", ""))
		testStatus(t, res, http.StatusFound)
		if got, want := res.Resp.Header.Get("Location"), "/login/?lang=en&next="+url.QueryEscape("/private/x?y=1"); got != want {
			t.Errorf("Location: got %q, want %q", got, want)
		}
		sessWaitIdle(t, s.Ctrl)
	})
	sessWaitIdle(t, s.Ctrl)
}

// sessPrime makes lanegate learn a grant for a fresh session of username
// and returns its cookie.
func sessPrime(t testing.TB, s *sessStack, f *sessDjango, username string) string {
	t.Helper()
	cookie := f.NewSession(t, username)
	sessWantBody(t, sessGet(t, s, "/private/", cookie, "prime"), "user 1\n")
	if s.Cache.Stats().Grants != 1 {
		t.Fatalf("priming: lanegate stored %d grants, want 1", s.Cache.Stats().Grants)
	}
	return cookie
}

// TestSessionAuthenticatedServedFirst holds the only core slot, queues an
// anonymous request and then an authenticated one: when the slot frees,
// the authenticated request goes first although it came second.
func TestSessionAuthenticatedServedFirst(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	f := sessNewDjango(kr, sessDjangoConfig{})
	defer f.ReleaseAll()
	up := testUpstream(t, f)
	s := sessNewStack(t, up.URL, testTightLimits(4), Options{}, sessMemory(t, kr, true))
	cookie := sessPrime(t, s, f, "alice")

	holder := testGo(s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/hold/", "", "holder", ""))
	f.Await(t, "holder")
	anon := testGo(s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/private/", "", "anon", ""))
	testWaitFor(t, "the anonymous request to queue", func() bool { return s.Ctrl.Snapshot().AnonQueued == 1 })
	auth := testGo(s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/private/", cookie, "auth", ""))
	testWaitFor(t, "the authenticated request to queue", func() bool { return testLane(s.Ctrl, admission.Core).Queued == 1 })
	if snap := s.Ctrl.Snapshot(); snap.InFlight != 1 || snap.AnonQueued != 1 {
		t.Fatalf("before release: in flight %d, anonymous queued %d; want 1, 1", snap.InFlight, snap.AnonQueued)
	}

	f.Release("holder")
	sessWantBody(t, testReceive(t, holder), "anonymous\n")
	sessWantBody(t, testReceive(t, auth), "user 1\n")
	sessWantBody(t, testReceive(t, anon), "anonymous\n")
	_, ia, _ := f.Find("auth")
	_, in, _ := f.Find("anon")
	if ia < 0 || in < 0 || ia > in {
		var order []string
		for _, a := range f.Arrivals() {
			order = append(order, a.Tag)
		}
		t.Errorf("upstream saw %v, want the authenticated request before the anonymous one", order)
	}
	sessIdentity(t, kr, f.Arrival(t, "auth"), cookie, "1", time.Now())
	sessNoIdentity(t, f.Arrival(t, "anon"))
	sessWaitIdle(t, s.Ctrl)
}

// TestSessionAnonCap fills the anonymous cap: a second anonymous request
// waits while an authenticated one is admitted at once.
func TestSessionAnonCap(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	f := sessNewDjango(kr, sessDjangoConfig{})
	defer f.ReleaseAll()
	up := testUpstream(t, f)
	var limits admission.Limits
	limits.Budget = 2
	limits.Lane[admission.Core] = admission.LaneLimits{Max: 2, Queue: 4, QueueTimeout: testTimeout}
	limits.AnonMax = 1
	s := sessNewStack(t, up.URL, limits, Options{}, sessMemory(t, kr, true))
	cookie := sessPrime(t, s, f, "alice")

	anon1 := testGo(s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/hold/", "", "anon1", ""))
	f.Await(t, "anon1")
	if snap := s.Ctrl.Snapshot(); snap.AnonInFlight != 1 {
		t.Fatalf("anonymous in flight: got %d, want 1", snap.AnonInFlight)
	}
	anon2 := testGo(s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/private/", "", "anon2", ""))
	testWaitFor(t, "the second anonymous request to queue", func() bool { return s.Ctrl.Snapshot().AnonQueued == 1 })

	// Admitted past the waiting anonymous request, without waiting for it.
	auth := testGo(s.NC, sessRequest(t, http.MethodGet, s.Server.URL+"/private/", cookie, "auth", ""))
	select {
	case res := <-auth:
		sessWantBody(t, res, "user 1\n")
	case <-anon2:
		t.Fatal("the second anonymous request was answered while the cap was full")
	case <-time.After(testTimeout):
		t.Fatalf("the authenticated request was not answered within %s while an anonymous one held the cap", testTimeout)
	}
	sessIdentity(t, kr, f.Arrival(t, "auth"), cookie, "1", time.Now())
	if _, _, ok := f.Find("anon2"); ok {
		t.Error("the second anonymous request reached the upstream while the cap was full")
	}
	if snap := s.Ctrl.Snapshot(); snap.AnonQueued != 1 || snap.AnonInFlight != 1 {
		t.Errorf("after the authenticated request: anonymous queued %d, in flight %d; want 1, 1", snap.AnonQueued, snap.AnonInFlight)
	}

	f.Release("anon1")
	sessWantBody(t, testReceive(t, anon1), "anonymous\n")
	sessWantBody(t, testReceive(t, anon2), "anonymous\n")
	sessWaitIdle(t, s.Ctrl)
}

// TestSessionStatusAndMetrics checks the admin view of the session cache:
// /status has the store, its health and the counters, and nothing secret;
// /metrics has the session series.
func TestSessionStatusAndMetrics(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	f := sessNewDjango(kr, sessDjangoConfig{})
	up := testUpstream(t, f)
	limits := testLimits()
	limits.AnonMax = 7
	s := sessNewStack(t, up.URL, limits, Options{}, sessMemory(t, kr, true))

	cookie := sessLogin(t, s, "alice", "", "login")                                     // no_cookie, grant stored
	sessWantBody(t, sessGet(t, s, "/private/", cookie, "a"), "user 1\n")                // hit
	sessWantBody(t, sessGet(t, s, "/private/", cookie, "b"), "user 1\n")                // hit
	sessWantBody(t, sessGet(t, s, "/private/", sessNewKey(), "unknown"), "anonymous\n") // miss, revoked by Django
	sessWantBody(t, sessGet(t, s, "/private/", "", "none"), "anonymous\n")              // no_cookie
	sessLogout(t, s, cookie, "logout")                                                  // hit, revoked

	st, body := sessStatus(t, s)
	want := s.Cache.Stats()
	if st.Sessions == nil {
		t.Fatalf("/status has no sessions section: %s", body)
	}
	if st.Sessions.Store != "memory" || !st.Sessions.Healthy || st.Sessions.LastError != "" || st.Sessions.LastErrorAt != nil {
		t.Errorf("sessions: got %+v, want store memory, healthy, no error", *st.Sessions)
	}
	if st.Sessions.Stats != want {
		t.Errorf("sessions.stats: got %+v, want the cache's %+v", st.Sessions.Stats, want)
	}
	if n, _ := s.Cache.Len(context.Background()); st.Sessions.Entries == nil || *st.Sessions.Entries != n || n < 1 {
		t.Errorf("sessions.entries: got %v, want the store's %d (at least the one grant)", st.Sessions.Entries, n)
	}
	if want.Hits != 3 || want.Misses != 1 || want.NoCookie != 2 || want.Grants != 1 || want.Revocations < 1 {
		t.Errorf("cache stats %+v: want 3 hits, 1 miss, 2 without cookie, 1 grant, revocations", want)
	}
	if st.Anonymous != (admin.AnonStatus{Max: 7}) {
		t.Errorf("anonymous: got %+v, want max 7, nothing in flight or queued", st.Anonymous)
	}
	for what, secret := range map[string]string{
		"identity secret":    sessSecret,
		"session cookie":     cookie,
		"session hash":       session.SessionHash(cookie),
		"session store key":  session.NewKeyMaker(kr).Key(session.SessionHash(cookie)).String(),
		"admin bearer token": testAdminToken,
	} {
		if strings.Contains(body, secret) {
			t.Errorf("/status shows the %s: %s", what, body)
		}
	}

	m := sessMetrics(t, s)
	sessWantMetrics(t, m, map[string]float64{
		`lanegate_session_lookups_total{result="hit"}`:          3,
		`lanegate_session_lookups_total{result="miss"}`:         1,
		`lanegate_session_lookups_total{result="no_cookie"}`:    2,
		`lanegate_session_lookups_total{result="coalesced"}`:    0,
		`lanegate_session_lookups_total{result="skipped"}`:      0,
		`lanegate_session_grants_total{result="stored"}`:        1,
		`lanegate_session_grants_total{result="rejected"}`:      0,
		`lanegate_session_revocations_total{result="applied"}`:  float64(want.Revocations),
		`lanegate_session_revocations_total{result="rejected"}`: 0,
		`lanegate_session_store_degraded`:                       0,
		`lanegate_session_store_entries`:                        float64(mustLen(t, s.Cache)),
		`lanegate_anonymous{state="max"}`:                       7,
	})
	// Every lookup (hits and misses: 4) and every grant (1) and revocation
	// is a timed store call.
	if got := m[`lanegate_session_store_seconds_count{op="get"}`]; got != 4 {
		t.Errorf(`store get calls timed: got %v, want 4`, got)
	}
	if got := m[`lanegate_session_store_seconds_count{op="put"}`]; got != 1 {
		t.Errorf(`store put calls timed: got %v, want 1`, got)
	}
	if got := m[`lanegate_session_store_seconds_count{op="revoke"}`]; got != float64(want.Revocations) {
		t.Errorf(`store revoke calls timed: got %v, want %d`, got, want.Revocations)
	}
	if got := sessSum(m, "lanegate_session_store_errors_total"); got != 0 {
		t.Errorf("store errors: got %v, want 0", got)
	}
	res := sessAdmin(t, s, "/readyz")
	testStatus(t, res, http.StatusOK)
	if string(res.Body) != "ok\n" {
		t.Errorf("/readyz: got %q, want %q", res.Body, "ok\n")
	}

	t.Run("cache off", func(t *testing.T) {
		s := sessNewStack(t, up.URL, testLimits(), Options{}, sessSetup{})
		st, body := sessStatus(t, s)
		if st.Sessions != nil || strings.Contains(body, `"sessions"`) {
			t.Errorf("/status with the cache off: got a sessions section: %s", body)
		}
		if m := sessMetrics(t, s); sessSum(m, "lanegate_session_lookups_total") != 0 {
			t.Errorf("/metrics with the cache off has session lookups")
		}
	})
	sessWaitIdle(t, s.Ctrl)
}

// TestSessionRedisSharedAcrossReplicas runs two lanegates over one Redis:
// a login through one is trusted through the other, and a logout through
// the other ends trust through the first.
func TestSessionRedisSharedAcrossReplicas(t *testing.T) {
	rs := redistest.Start(t)
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	f := sessNewDjango(kr, sessDjangoConfig{})
	up := testUpstream(t, f)
	a := sessNewStack(t, up.URL, testLimits(), Options{}, sessSetup{Store: sessRedis(t, rs.URL()), StoreName: "redis", Keyring: kr})
	b := sessNewStack(t, up.URL, testLimits(), Options{}, sessSetup{Store: sessRedis(t, rs.URL()), StoreName: "redis", Keyring: kr})

	cookie := sessLogin(t, a, "alice", "", "login via A")
	sessWantBody(t, sessGet(t, b, "/private/", cookie, "get via B"), "user 1\n")
	sessIdentity(t, kr, f.Arrival(t, "get via B"), cookie, "1", time.Now())
	if got := b.Cache.Stats().Hits; got != 1 {
		t.Errorf("B's hits: got %d, want 1", got)
	}

	sessLogout(t, b, cookie, "logout via B")
	sessIdentity(t, kr, f.Arrival(t, "logout via B"), cookie, "1", time.Now())

	sessWantBody(t, sessGet(t, a, "/private/", cookie, "get via A"), "anonymous\n")
	sessNoIdentity(t, f.Arrival(t, "get via A"))
	if st := a.Cache.Stats(); st.Hits != 0 || st.Misses != 1 || st.StoreErrors != 0 {
		t.Errorf("A's stats %+v: want no hit, one miss, no store error", st)
	}
	if f.Reads() != 1 {
		t.Errorf("fake Django read the session %d times, want 1 (only after the logout)", f.Reads())
	}
	st, body := sessStatus(t, a)
	if st.Sessions == nil || st.Sessions.Store != "redis" || !st.Sessions.Healthy {
		t.Errorf("A's /status sessions: %s, want store redis, healthy", body)
	}
	sessWaitIdle(t, a.Ctrl)
	sessWaitIdle(t, b.Ctrl)
}

// TestSessionRedisOutage kills Redis under traffic: requests keep being
// served, without identity, the store errors are counted, /readyz stays
// ready but says degraded; once Redis is back and the backoff is over,
// identities flow again. The cache runs on a fake clock (shared with the
// fake Django) so the backoff is exactly as long as the test makes it.
func TestSessionRedisOutage(t *testing.T) {
	rs := redistest.Start(t)
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	clock := clockwork.NewFakeClockAt(time.Now())
	f := sessNewDjango(kr, sessDjangoConfig{Clock: clock})
	up := testUpstream(t, f)
	s := sessNewStack(t, up.URL, testLimits(), Options{}, sessSetup{Store: sessRedis(t, rs.URL()), StoreName: "redis", Keyring: kr, Clock: clock})

	cookie := sessLogin(t, s, "alice", "", "login")
	sessWantBody(t, sessGet(t, s, "/private/", cookie, "up"), "user 1\n")
	sessIdentity(t, kr, f.Arrival(t, "up"), cookie, "1", clock.Now())
	before := sessMetrics(t, s)
	if got := sessSum(before, "lanegate_session_store_errors_total"); got != 0 {
		t.Fatalf("store errors before the outage: got %v, want 0", got)
	}

	rs.Stop()
	for i := range 5 {
		tag := "down" + strconv.Itoa(i)
		// Served by the app's normal path: 200, never a 5xx from lanegate.
		sessWantBody(t, sessGet(t, s, "/private/", cookie, tag), "user 1\n")
		a := f.Arrival(t, tag)
		sessNoIdentity(t, a)
		if !a.Read {
			t.Errorf("%s: the app did not read the session", tag)
		}
	}
	// A login while Redis is down still works; its grant cannot be stored.
	down := sessLogin(t, s, "bob", "", "login while down")
	sessWantBody(t, sessGet(t, s, "/private/", down, "bob while down"), "user 3\n")
	sessNoIdentity(t, f.Arrival(t, "bob while down"))

	m := sessMetrics(t, s)
	if got := sessSum(m, "lanegate_session_store_errors_total"); got < 1 {
		t.Errorf("store errors during the outage: got %v, want at least 1", got)
	}
	if got := m[`lanegate_session_lookups_total{result="skipped"}`]; got < 1 {
		t.Errorf("lookups skipped during the outage: got %v, want at least 1", got)
	}
	sessWantMetrics(t, m, map[string]float64{`lanegate_session_store_degraded`: 1})
	res := sessAdmin(t, s, "/readyz")
	testStatus(t, res, http.StatusOK)
	if !strings.Contains(string(res.Body), "degraded") {
		t.Errorf("/readyz during the outage: got %q, want it to say degraded", res.Body)
	}
	st, body := sessStatus(t, s)
	if st.Sessions == nil || st.Sessions.Healthy || st.Sessions.LastError == "" || st.Sessions.LastErrorAt == nil {
		t.Errorf("/status during the outage: %s, want unhealthy with the last error", body)
	}

	rs.Restart()
	// The restarted Redis is empty: log in afresh, past the backoff, until
	// a request of the new session is trusted again. The first tries may
	// fail: on a pooled connection to the old server, or while go-redis,
	// after repeated dial errors, redials only once a second.
	var tries int
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	testWaitFor(t, "identities to flow again after Redis came back", func() bool {
		<-tick.C
		tries++
		clock.Advance(2 * time.Second)
		tag := "back" + strconv.Itoa(tries)
		c := sessLogin(t, s, "alice", "", "login "+tag)
		sessWantBody(t, sessGet(t, s, "/private/", c, tag), "user 1\n")
		a := f.Arrival(t, tag)
		if _, ok := a.Header[session.HeaderIdentity]; !ok {
			return false
		}
		sessIdentity(t, kr, a, c, "1", clock.Now())
		return true
	})
	res = sessAdmin(t, s, "/readyz")
	testStatus(t, res, http.StatusOK)
	if string(res.Body) != "ok\n" {
		t.Errorf("/readyz after Redis came back: got %q, want %q", res.Body, "ok\n")
	}
	sessWantMetrics(t, sessMetrics(t, s), map[string]float64{`lanegate_session_store_degraded`: 0})
	sessWaitIdle(t, s.Ctrl)
}

// TestSessionStatusHidesStoreAddress checks what SessionStatus promises:
// /status never shows a store address, even when the store's last error
// would name it.
func TestSessionStatusHidesStoreAddress(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	f := sessNewDjango(kr, sessDjangoConfig{})
	up := testUpstream(t, f)
	dead := testDeadAddr(t)
	const password = "redis-password-0123"
	store := sessRedis(t, "redis://lanegate:"+password+"@"+dead+"/0")
	s := sessNewStack(t, up.URL, testLimits(), Options{}, sessSetup{Store: store, StoreName: "redis", Keyring: kr})

	cookie := f.NewSession(t, "alice")
	sessWantBody(t, sessGet(t, s, "/private/", cookie, "a"), "user 1\n")
	st, body := sessStatus(t, s)
	if st.Sessions == nil || st.Sessions.Healthy || st.Sessions.LastError == "" {
		t.Fatalf("/status: %s, want an unhealthy store with its last error", body)
	}
	_, port, _ := strings.Cut(dead, ":")
	for what, secret := range map[string]string{"store address": dead, "store port": ":" + port, "store password": password} {
		if strings.Contains(body, secret) {
			t.Errorf("/status shows the %s (%s): %s", what, secret, body)
		}
	}
	sessWaitIdle(t, s.Ctrl)
}

// TestSessionInterimResponseHidesGrant has the app send grant and revoke
// headers on a 103 Early Hints before its final answer. Requests with an
// Upgrade header go through net/http's transport, which relays interim
// responses (as it does every request to an HTTPS upstream); the
// interim headers must not reach the client either.
func TestSessionInterimResponseHidesGrant(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		w.Header().Set(session.HeaderGrant, kr.Sign(&session.Claims{Type: session.TypeGrant, SID: "x", UserID: "1", IssuedAt: now.Unix()}))
		w.Header().Set(session.HeaderRevoke, kr.Sign(&session.Claims{Type: session.TypeRevoke, SIDs: []string{"x"}, IssuedAt: now.Unix()}))
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "ok")
	}))
	for _, on := range []bool{false, true} {
		t.Run(map[bool]string{false: "cache off", true: "cache on"}[on], func(t *testing.T) {
			s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, on))
			req := sessRequest(t, http.MethodGet, s.Server.URL+"/private/", "", "", "")
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			var interim []textproto.MIMEHeader
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
					interim = append(interim, h)
					return nil
				},
			}))
			res := sessFetch(t, s.NC, req)
			testStatus(t, res, http.StatusOK)
			if len(interim) == 0 {
				t.Fatal("the client got no interim response; the test no longer exercises 1xx")
			}
			for _, h := range append(interim, textproto.MIMEHeader(res.Resp.Header)) {
				if k := sessLanegateKeys(http.Header(h)); len(k) > 0 {
					t.Errorf("the client got %v in %v", k, h)
				}
			}
			sessWaitIdle(t, s.Ctrl)
		})
	}
}

// Django cannot send trailers (WSGI has none), but an ASGI app or a
// middleware could: lanegate's headers must not leave as trailers either.
func TestSessionTrailersStripped(t *testing.T) {
	up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Lanegate-Revoke, X-Other")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "body")
		w.Header().Set("X-Lanegate-Revoke", "v1.k.x.y")
		w.Header().Set("X-Other", "kept")
		w.Header().Set(http.TrailerPrefix+"X-Lanegate-Grant", "v1.k.x.y")
	}))
	p := testNewProxy(t, up.URL, testLimits(), Options{})
	resp, err := p.Client.Get(p.Server.URL + "/page")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Trailer.Get("X-Other") != "kept" {
		t.Fatalf("trailers = %v: the test's upstream trailer did not arrive, so it proves nothing", resp.Trailer)
	}
	for _, h := range []string{"X-Lanegate-Revoke", "X-Lanegate-Grant"} {
		if v := resp.Trailer.Get(h); v != "" {
			t.Errorf("trailer %s reached the client: %q", h, v)
		}
	}
}

// BenchmarkHandlerSession is BenchmarkHandler for a request carrying a
// session cookie: cache off (the cookie is ignored), and a memory-store hit
// (the request is forwarded with a signed identity). The difference is the
// cost of the session cache on the request path.
func BenchmarkHandlerSession(b *testing.B) {
	up := testUpstream(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello, world\n")
	}))
	u, _ := url.Parse(up.URL)
	const cookie = "abcdefghijklmnopqrstuvwxyz012345"
	for _, withCache := range []bool{false, true} {
		name := "off"
		if withCache {
			name = "memory_hit"
		}
		b.Run(name, func(b *testing.B) {
			limits := testLimits()
			limits.Budget = admission.MaxBudget
			for _, l := range admission.Lanes() {
				limits.Lane[l].Max = admission.MaxBudget
			}
			ctrl, err := admission.New(limits)
			if err != nil {
				b.Fatal(err)
			}
			opts := Options{Upstream: u, Rules: testProxyRules, IdleConns: 256, Mode: admission.Enforce}
			if withCache {
				kr, err := session.ParseKeyring("k1:" + strings.Repeat("s", 32))
				if err != nil {
					b.Fatal(err)
				}
				mem, _ := session.NewMemory(1000, nil)
				cache, err := session.NewCache(session.CacheOptions{Store: mem, Keyring: kr})
				if err != nil {
					b.Fatal(err)
				}
				now := time.Now()
				r := cache.Begin(context.Background(), http.Header{"Cookie": {"sessionid=" + cookie}})
				cache.Response(context.Background(), r, http.Header{session.HeaderGrant: {kr.Sign(&session.Claims{
					Type: session.TypeGrant, SID: session.SessionHash(cookie), UserID: "42", AuthHash: "h",
					Expires: now.Add(time.Hour).Unix(), IssuedAt: now.Unix()})}}, 200)
				opts.Sessions = cache
			}
			h, err := New(ctrl, opts, zap.NewNop(), nil)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(h.Close)
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, "/accounts/profile/", nil)
				req.Header.Set("Cookie", "csrftoken=x; sessionid="+cookie)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
			}
		})
	}
}

func mustLen(t *testing.T, c *session.Cache) int {
	t.Helper()
	n, err := c.Len(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSessionSwitchingProtocolsFiltered has the app answer a WebSocket
// upgrade with 101 and lanegate's headers on it. ReverseProxy writes a 101
// to the hijacked connection itself, past the recorder: the headers must
// still not reach the client, and a revocation on it must be applied.
func TestSessionSwitchingProtocolsFiltered(t *testing.T) {
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n%s: %s\r\n%s: %s\r\n\r\n",
			session.HeaderGrant, kr.Sign(&session.Claims{Type: session.TypeGrant, SID: "x", UserID: "1", IssuedAt: now.Unix()}),
			session.HeaderRevoke, kr.Sign(&session.Claims{Type: session.TypeRevoke, SIDs: []string{session.SessionHash(sessNewKey())}, IssuedAt: now.Unix()}))
		brw.Flush()
		io.Copy(io.Discard, c) // until the client closes the tunnel
	}))
	for _, on := range []bool{false, true} {
		t.Run(map[bool]string{false: "cache off", true: "cache on"}[on], func(t *testing.T) {
			s := sessNewStack(t, up.URL, testLimits(), Options{}, sessMemory(t, kr, on))
			c, err := net.Dial("tcp", s.Server.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /ws/ HTTP/1.1\r\nHost: lanegate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			c.SetReadDeadline(time.Now().Add(testTimeout))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("reading the 101: %v", err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status: got %d, want 101", resp.StatusCode)
			}
			if k := sessLanegateKeys(resp.Header); len(k) > 0 {
				t.Errorf("the client got %v on the 101", k)
			}
			if on {
				if got := s.Cache.Stats().Revocations; got != 1 {
					t.Errorf("revocations applied: got %d, want the 101's one", got)
				}
			}
			c.Close()
			sessWaitIdle(t, s.Ctrl)
		})
	}
}
