package proxy

// Redis faults under traffic, against a private redis-server: stopped,
// slow past the store's timeout (through a latency-injecting TCP proxy),
// restarted empty, and a logout while Redis cannot be reached. Names start
// with "rf" (helpers) and "TestSessionRedisFault" (tests).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/session/redistest"
)

const (
	// rfTimeout is the store's Timeout (LANEGATE_REDIS_TIMEOUT): short, so
	// that the slow phases cost little, yet long enough that a loaded test
	// machine rarely times out a healthy call (which would only cost a
	// miss; nothing here asserts a hit at a given moment).
	rfTimeout = 200 * time.Millisecond
	// rfSlow is the latency the proxy adds each way when Redis is slow:
	// far above rfTimeout, so no store call answers in time, and a command
	// the client gave up on is dropped with its connection long before it
	// would have been delivered.
	rfSlow = 5 * time.Second
	// rfBackoff is a step of the fake clock past the cache's failure
	// backoff (one second).
	rfBackoff = time.Second + time.Millisecond
)

// rfEnv is a lanegate stack whose Redis store goes through a fault proxy
// to a private redis-server, on a fake clock shared with the fake Django.
type rfEnv struct {
	rs    *redistest.Server
	fp    *redistest.FaultProxy
	kr    *session.Keyring
	clock *clockwork.FakeClock
	f     *sessDjango
	s     *sessStack
	// lastKick is when kick last advanced the clock, in real time.
	lastKick time.Time
}

func rfSetup(t *testing.T) *rfEnv {
	t.Helper()
	rs := redistest.Start(t)
	fp := redistest.NewFaultProxy(t, rs.Addr())
	kr := sessKeyring(t, sessKeyID+":"+sessSecret)
	clock := clockwork.NewFakeClockAt(time.Now())
	f := sessNewDjango(kr, sessDjangoConfig{Clock: clock})
	up := testUpstream(t, f)
	s := sessNewStack(t, up.URL, testLimits(), Options{}, sessSetup{
		Store: rfRedis(t, fp.URL()), StoreName: "redis", Keyring: kr, Clock: clock,
	})
	return &rfEnv{rs: rs, fp: fp, kr: kr, clock: clock, f: f, s: s}
}

// rfRedis opens a Redis store on url with rfTimeout.
func rfRedis(t testing.TB, url string) *session.Redis {
	t.Helper()
	r, err := session.NewRedis(session.RedisOptions{URL: url, Timeout: rfTimeout, PoolSize: 4})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	return r
}

// kick moves the fake clock past the cache's backoff when the store is
// backed off, so the next lookup asks the store again; at most every 20 ms
// of real time, so that polling loops do not race the clock through the
// cache TTL or the tokens' freshness windows.
func (e *rfEnv) kick() {
	if e.s.Cache.Health().Degraded && time.Since(e.lastKick) >= 20*time.Millisecond {
		e.clock.Advance(rfBackoff)
		e.lastKick = time.Now()
	}
}

// rfUsers are the fake Django's users and their ids.
var rfUsers = [][2]string{{"alice", "1"}, {"admin", "2"}, {"bob", "3"}}

// rfResult is one request of the traffic.
type rfResult struct {
	client           int
	tag              string
	startGen, endGen int64
	status           int
	body             string
	err              error
	dur              time.Duration
}

// rfTraffic is several clients, each logged in with a session of its own,
// doing authenticated GETs through the stack in a loop. The test marks the
// faults with generations: a request that started and ended in the same
// generation, one marked faulty, ran entirely while the fault was in force.
type rfTraffic struct {
	e       *rfEnv
	cookies []string
	uids    []string

	gen   atomic.Int64
	done  atomic.Int64 // requests completed
	stop  chan struct{}
	wg    sync.WaitGroup
	trust []atomic.Int64 // per client: highest start generation of a trusted request, plus one

	mu      sync.Mutex
	faulty  map[int64]string // generation → the fault in force all through it
	results []rfResult
}

func rfStartTraffic(t *testing.T, e *rfEnv, clients int) *rfTraffic {
	t.Helper()
	tr := &rfTraffic{e: e, stop: make(chan struct{}), faulty: map[int64]string{}, trust: make([]atomic.Int64, clients)}
	for i := range clients {
		u := rfUsers[i%len(rfUsers)]
		tr.cookies = append(tr.cookies, sessLogin(t, e.s, u[0], "", fmt.Sprintf("traffic login %d", i)))
		tr.uids = append(tr.uids, u[1])
	}
	for i := range clients {
		tr.wg.Add(1)
		go tr.client(i)
	}
	t.Cleanup(tr.Stop) // before the stack's cleanup runs: registered after it
	return tr
}

// client loops GETs until Stop. It runs outside the test goroutine, so it
// records what happened and the test checks it.
func (tr *rfTraffic) client(i int) {
	defer tr.wg.Done()
	pace := time.NewTicker(2 * time.Millisecond) // pacing, not synchronisation
	defer pace.Stop()
	for n := 0; ; n++ {
		select {
		case <-tr.stop:
			return
		case <-pace.C:
		}
		tag := fmt.Sprintf("traffic %d/%d", i, n)
		req, err := http.NewRequest(http.MethodGet, tr.e.s.Server.URL+"/private/", nil)
		if err != nil {
			panic(err)
		}
		req.Header.Set("Cookie", "csrftoken=abc; "+sessCookie+"="+tr.cookies[i])
		req.Header.Set(sessTagHeader, tag)
		r := rfResult{client: i, tag: tag, startGen: tr.gen.Load()}
		start := time.Now()
		res := testDo(tr.e.s.NC, req)
		r.dur = time.Since(start)
		r.endGen = tr.gen.Load()
		r.err = res.Err
		if res.Resp != nil {
			r.status = res.Resp.StatusCode
		}
		r.body = string(res.Body)
		if a, _, ok := tr.e.f.Find(tag); ok && a.Trusted {
			for {
				old := tr.trust[i].Load()
				if old >= r.startGen+1 || tr.trust[i].CompareAndSwap(old, r.startGen+1) {
					break
				}
			}
		}
		tr.mu.Lock()
		tr.results = append(tr.results, r)
		tr.mu.Unlock()
		tr.done.Add(1)
	}
}

// Stop ends the traffic and waits for its clients. Stopping again does
// nothing.
func (tr *rfTraffic) Stop() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
}

// Fault starts a generation during all of which fault is in force: call
// it after applying the fault.
func (tr *rfTraffic) Fault(name string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.faulty[tr.gen.Add(1)] = name
}

// Healthy starts a generation without fault: call it before removing one.
// It returns the generation.
func (tr *rfTraffic) Healthy() int64 { return tr.gen.Add(1) }

// Run lets the traffic complete n more requests, kicking the clock past the
// backoff every n/rounds of them so that the store keeps being asked.
func (tr *rfTraffic) Run(t *testing.T, n, rounds int) {
	t.Helper()
	for range rounds {
		target := tr.done.Load() + int64(n/rounds)
		testWaitFor(t, fmt.Sprintf("%d requests of traffic", n/rounds), func() bool { return tr.done.Load() >= target })
		tr.e.clock.Advance(rfBackoff)
	}
}

// AwaitTrust waits until every client has been trusted on a request that
// started in generation g or later: identities flow again.
func (tr *rfTraffic) AwaitTrust(t *testing.T, g int64, what string) {
	t.Helper()
	testWaitFor(t, what, func() bool {
		tr.e.kick()
		for i := range tr.trust {
			if tr.trust[i].Load() < g+1 {
				return false
			}
		}
		return true
	})
}

// Check stops the traffic and checks every request it made: a 200 from the
// app as the client's user, and no identity for a request that ran while a
// fault was in force. It returns how many requests ran in each fault.
func (tr *rfTraffic) Check(t *testing.T) map[string]int {
	t.Helper()
	tr.Stop()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	inFault := map[string]int{}
	slowest := map[string]time.Duration{}
	bad := 0
	for _, r := range tr.results {
		want := "user " + tr.uids[r.client] + "\n"
		if r.err != nil || r.status != http.StatusOK || r.body != want {
			if bad++; bad <= 10 {
				t.Errorf("request %q (generations %d-%d): status %d body %q error %v, want 200 %q",
					r.tag, r.startGen, r.endGen, r.status, r.body, r.err, want)
			}
			continue
		}
		fault, ok := tr.faulty[r.startGen]
		if !ok || r.endGen != r.startGen {
			continue
		}
		inFault[fault]++
		slowest[fault] = max(slowest[fault], r.dur)
		a, _, found := tr.e.f.Find(r.tag)
		if !found {
			t.Errorf("request %q never reached the app", r.tag)
			continue
		}
		if _, has := sessHeader(a.Header, session.HeaderIdentity); has || a.Trusted {
			if bad++; bad <= 10 {
				t.Errorf("request %q ran while Redis was %s but reached the app with an identity (trusted %v)", r.tag, fault, a.Trusted)
			}
		}
		if !a.Read {
			t.Errorf("request %q ran while Redis was %s but the app did not read the session", r.tag, fault)
		}
	}
	if bad > 10 {
		t.Errorf("... %d bad requests in all", bad)
	}
	t.Logf("%d requests; during faults: %v; slowest during each: %v", len(tr.results), inFault, slowest)
	return inFault
}

// TestSessionRedisFaultsUnderTraffic runs authenticated traffic through a
// lanegate whose Redis is stopped, restarted empty, made slow past the
// store's timeout, and healed: every request is answered by the app (fail
// open, never a 5xx), none carries an identity while the store cannot
// answer, and identities flow again after each recovery.
func TestSessionRedisFaultsUnderTraffic(t *testing.T) {
	e := rfSetup(t)
	tr := rfStartTraffic(t, e, 4)
	tr.AwaitTrust(t, 0, "identities to flow before any fault")

	// (a) Redis stopped.
	e.rs.Stop()
	tr.Fault("stopped")
	tr.Run(t, 60, 3)
	res := sessAdmin(t, e.s, "/readyz")
	testStatus(t, res, http.StatusOK) // ready, if degraded: lanegate fails open

	// (c) Redis restarted, empty: the cache refills from fresh grants.
	g := tr.Healthy()
	e.rs.Restart()
	tr.AwaitTrust(t, g, "identities to flow again after Redis restarted empty")
	// A fresh login is trusted too.
	c := sessLogin(t, e.s, "bob", "", "login after restart")
	testWaitFor(t, "a fresh login to be trusted after the restart", func() bool {
		e.kick()
		tag := fmt.Sprintf("fresh %d", time.Now().UnixNano())
		sessWantBody(t, sessGet(t, e.s, "/private/", c, tag), "user 3\n")
		return e.f.Arrival(t, tag).Trusted
	})

	// (b) Redis slow: every call takes longer than the store's timeout.
	e.fp.SetLatency(rfSlow, rfSlow)
	tr.Fault("slow")
	tr.Run(t, 60, 3)

	// Healed: Redis kept its entries, so identities flow again as soon as
	// the store answers, without a new grant.
	g = tr.Healthy()
	e.fp.Heal()
	tr.AwaitTrust(t, g, "identities to flow again after Redis was slow")

	inFault := tr.Check(t)
	for _, fault := range []string{"stopped", "slow"} {
		if inFault[fault] == 0 {
			t.Errorf("no request ran entirely while Redis was %s; the test proves nothing about it", fault)
		}
	}
	m := sessMetrics(t, e.s)
	if got := sessSum(m, "lanegate_session_store_errors_total"); got < 2 {
		t.Errorf("store errors: got %v, want some for each fault", got)
	}
	if got := sessSum(m, "lanegate_upstream_errors_total"); got != 0 {
		t.Errorf("upstream errors: %v, want none", got)
	}
	sessWaitIdle(t, e.s.Ctrl)
}

// TestSessionRedisFaultLogoutDuringOutage logs a session out while Redis
// cannot take the revocation but keeps the entry (slow past the timeout,
// or unreachable), then restores Redis and replays the old cookie: it must
// not be trusted. Before the cache kept failed revocations, the entry Redis
// still held made the old cookie trusted again until the cache TTL.
func TestSessionRedisFaultLogoutDuringOutage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(e *rfEnv)
	}{
		{"slow", func(e *rfEnv) { e.fp.SetLatency(rfSlow, rfSlow) }},
		{"unreachable", func(e *rfEnv) { e.fp.Cut() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := rfSetup(t)
			ctx := context.Background()
			// Straight to Redis, past the fault proxy: what Redis holds.
			direct := rfRedis(t, e.rs.URL())
			t.Cleanup(func() { direct.Close() })
			key := session.NewKeyMaker(e.kr).Key

			tr := rfStartTraffic(t, e, 2)
			old := sessLogin(t, e.s, "alice", "", "login")
			control := sessLogin(t, e.s, "bob", "", "control login")
			sessWantBody(t, sessGet(t, e.s, "/private/", old, "trusted"), "user 1\n")
			sessIdentity(t, e.kr, e.f.Arrival(t, "trusted"), old, "1", e.clock.Now())

			tc.fault(e)
			tr.Fault(tc.name)
			sessLogout(t, e.s, old, "logout")
			tr.Run(t, 20, 2)
			// Checked before healing, after which a retried revocation may
			// land at any moment.
			if _, ok, err := direct.Get(ctx, key(session.SessionHash(old))); err != nil || !ok {
				t.Fatalf("Redis no longer holds the logged-out session's entry (ok %v, err %v): the revocation reached it, so the test proves nothing", ok, err)
			}
			g := tr.Healthy()
			// Heal also drops whatever the proxy still held back, so the
			// revocation that timed out can never reach Redis late.
			e.fp.Heal()

			// The store answers again once the control session is trusted.
			testWaitFor(t, "the store to answer again", func() bool {
				e.kick()
				tag := fmt.Sprintf("control %d", time.Now().UnixNano())
				sessWantBody(t, sessGet(t, e.s, "/private/", control, tag), "user 3\n")
				return e.f.Arrival(t, tag).Trusted
			})
			tr.AwaitTrust(t, g, "identities to flow again for the traffic")

			// The replayed old cookie: the app's own path says anonymous.
			for i := range 3 {
				tag := fmt.Sprintf("replay %d", i)
				res := sessGet(t, e.s, "/private/", old, tag)
				testStatus(t, res, http.StatusOK)
				a := e.f.Arrival(t, tag)
				if _, has := sessHeader(a.Header, session.HeaderIdentity); has || a.Trusted {
					t.Fatalf("replay %d of the logged-out cookie after Redis came back reached the app with an identity (answered %q)", i, res.Body)
				}
				if string(res.Body) != "anonymous\n" {
					t.Errorf("replay %d: body %q, want anonymous", i, res.Body)
				}
			}

			// The revocation was retried: nothing pending, and Redis holds
			// no entry for the old session (other replicas are safe too).
			testWaitFor(t, "no revocation pending", func() bool {
				e.kick()
				sessGet(t, e.s, "/private/", control, "")
				return rfPending(t, e.s) == 0
			})
			if _, ok, err := direct.Get(ctx, key(session.SessionHash(old))); err != nil || ok {
				t.Errorf("Redis still holds the logged-out session's entry (ok %v, err %v)", ok, err)
			}
			if n := e.s.Logs.FilterMessageSnippet("revocation failed").Len(); n == 0 {
				t.Error("the failed revocation was not logged")
			}
			inFault := tr.Check(t)
			if inFault[tc.name] == 0 {
				t.Errorf("no traffic ran entirely while Redis was %s", tc.name)
			}
			sessWaitIdle(t, e.s.Ctrl)
		})
	}
}

// rfPending reads sessions.stats.revokes_pending from /status; 0 when the
// field is absent.
func rfPending(t *testing.T, s *sessStack) float64 {
	t.Helper()
	_, body := sessStatus(t, s)
	var doc any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("/status: %v", err)
	}
	v, _ := testJSONPath(doc, "sessions", "stats", "revokes_pending")
	n, _ := v.(float64)
	return n
}
