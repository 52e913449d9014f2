package admin

// An operator opens the live page in a real browser (headless Chromium
// driven by chromedp) on an admin listener with a token: the browser asks
// for credentials, the page polls /status with them, and shows what
// /status says — lanes with requests in flight and queued, the waiting
// room, the session cache, the pool watcher and the fleet — without a
// console error or a Content-Security-Policy violation. When /status
// fails, the page says its figures are stale, then that lanegate is
// unreachable, and goes live again when /status answers.
//
// Chromium is Debian's /usr/bin/chromium (apt-get install chromium). The
// test is skipped without it unless TEST_REQUIRE_BROWSER=1. It talks only
// to 127.0.0.1. Its screenshot goes to the test's temporary directory and,
// when LANEGATE_SCREENSHOT_DIR is set, there too.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/fleet"
	"github.com/lanegate/lanegate/internal/browsertest"
	"github.com/lanegate/lanegate/poolwatch"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/waitroom"
)

// livePlane is a data plane with a waiting room of fixed figures.
type livePlane struct {
	testPlane
	room waitroom.Status
}

func (p *livePlane) RoomStatus(admission.RoomStats) *waitroom.Status { r := p.room; return &r }
func (p *livePlane) Bypassed() uint64                                { return 17 }

// liveSessions is a session cache of fixed figures.
type liveSessions struct{ errorAt time.Time }

func (liveSessions) Stats() session.Stats {
	return session.Stats{Hits: 1200, Misses: 31, NoCookie: 410, Coalesced: 4, Grants: 29, Revocations: 3, StoreErrors: 2, Skipped: 1}
}
func (s liveSessions) Health() session.Health {
	return session.Health{LastError: "redis: i/o timeout", LastErrorAt: s.errorAt}
}
func (liveSessions) Len(context.Context) (int, error) { return 57, nil }

// liveFleet is a fleet of three members, this one first.
type liveFleet struct{ expires time.Time }

func (f liveFleet) Status() fleet.Status {
	st := fleet.Status{State: fleet.StateOK, Member: "lg-a", Members: 3, Renewals: 812, Failures: 1}
	st.Grant.Lane[admission.Login] = fleet.LaneGrant{Max: 2, Reserved: 1}
	st.Grant.Lane[admission.Core] = fleet.LaneGrant{Max: 6, Reserved: 4}
	st.Grant.Lane[admission.Export] = fleet.LaneGrant{Max: 1}
	st.Grant.Budget, st.Grant.Expires = 9, f.expires
	st.Demand[admission.Login] = fleet.LaneDemand{InFlight: 2, Queued: 1}
	st.Demand[admission.Core] = fleet.LaneDemand{InFlight: 3}
	return st
}

func (f liveFleet) Members(context.Context) ([]fleet.Member, error) {
	ms := []fleet.Member{
		{ID: "lg-a", Age: 180 * time.Millisecond, Remaining: 2820 * time.Millisecond},
		{ID: "lg-b", Age: 420 * time.Millisecond, Remaining: 2580 * time.Millisecond},
		{ID: "lg-c", Age: 1100 * time.Millisecond, Remaining: 1900 * time.Millisecond},
	}
	for i := range ms {
		ms[i].Lane[admission.Login] = fleet.LaneGrant{Max: 2 - i/2, Reserved: 1 - i/2}
		ms[i].Lane[admission.Core] = fleet.LaneGrant{Max: 6 - i, Reserved: 4 - i}
		ms[i].Demand[admission.Login] = fleet.LaneDemand{InFlight: 2 - i/2, Queued: 1 - i/2}
		ms[i].Demand[admission.Core] = fleet.LaneDemand{InFlight: 3 + i}
	}
	return ms, nil
}

// liveLoad holds permits on ctrl so that /status has figures: two logins
// in flight and one queued, three core requests in flight (one anonymous),
// one export in flight and one shed for a full queue. Cleanup releases
// them.
func liveLoad(t *testing.T, ctrl *admission.Controller) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var held []*admission.Permit
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, p := range held {
			p.Release()
		}
	})
	acquire := func(r admission.Request) *admission.Permit {
		p, err := ctrl.Acquire(ctx, r)
		if err != nil {
			t.Fatalf("acquire %s: %v", r.Lane, err)
		}
		return p
	}
	// A few finished requests, so that service times are measured.
	for range 3 {
		p := acquire(admission.Request{Lane: admission.Core})
		time.Sleep(15 * time.Millisecond)
		p.Release()
	}
	p := acquire(admission.Request{Lane: admission.Login, Client: "203.0.113.9"})
	time.Sleep(40 * time.Millisecond)
	p.Release()
	held = append(held,
		acquire(admission.Request{Lane: admission.Login, Client: "203.0.113.7"}),
		acquire(admission.Request{Lane: admission.Login, Client: "203.0.113.8"}),
		acquire(admission.Request{Lane: admission.Core}),
		acquire(admission.Request{Lane: admission.Core}),
		acquire(admission.Request{Lane: admission.Core, Anonymous: true}),
		acquire(admission.Request{Lane: admission.Export}),
	)
	if _, err := ctrl.Acquire(ctx, admission.Request{Lane: admission.Export}); !errors.Is(err, admission.ErrQueueFull) {
		t.Fatalf("a second export: %v, want it shed for a full queue", err)
	}
	wg.Go(func() { // queued until the test ends
		if p, err := ctrl.Acquire(ctx, admission.Request{Lane: admission.Login, Client: "203.0.113.10"}); err == nil {
			p.Release()
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for ctrl.Snapshot().Lanes[admission.Login].Queued != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the third login never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// liveStatus is /status as the test reads it, numbers kept as written.
func liveStatus(t *testing.T, base, token string) (map[string]any, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/status", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/status: %d %s", resp.StatusCode, buf.Bytes())
	}
	dec := json.NewDecoder(bytes.NewReader(buf.Bytes()))
	dec.UseNumber()
	var st map[string]any
	if err := dec.Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st, buf.Bytes()
}

// lookup finds the value at a dotted path (lanes.login.in_flight,
// fleet.fleet.0.id) in a decoded JSON document.
func lookup(doc any, path string) (any, bool) {
	for part := range strings.SplitSeq(path, ".") {
		switch v := doc.(type) {
		case map[string]any:
			x, ok := v[part]
			if !ok {
				return nil, false
			}
			doc = x
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil || i < 0 || i >= len(v) {
				return nil, false
			}
			doc = v[i]
		default:
			return nil, false
		}
	}
	return doc, true
}

// shown is one figure the page shows: the /status field it names, its
// text, and the exact value kept in its title or datetime.
type shown struct {
	Key      string `json:"k"`
	Text     string `json:"text"`
	Title    string `json:"title"`
	Datetime string `json:"datetime"`
	Dur      bool   `json:"dur"`
}

const liveShown = `JSON.stringify(Array.from(document.querySelectorAll('[data-k]'))
	.filter(e => !e.closest('[hidden]'))
	.map(e => ({k: e.dataset.k, text: e.textContent, title: e.title,
		datetime: e.getAttribute('datetime') || '', dur: e.hasAttribute('data-dur')})))`

// words are how the page shows /status's booleans.
var liveWords = map[string][2]string{
	"sessions.healthy": {"failing", "healthy"},
	"pool.follow":      {"no (watch only)", "yes"},
	"last_reload.ok":   {"refused", "applied"},
}

// checkShown compares each figure the page shows with /status.
func checkShown(t *testing.T, st map[string]any, figures []shown) {
	t.Helper()
	for _, f := range figures {
		v, ok := lookup(st, f.Key)
		if !ok {
			t.Errorf("the page shows %q as %q, which /status does not have", f.Key, f.Text)
			continue
		}
		base := f.Key[strings.LastIndex(f.Key, ".")+1:]
		switch v := v.(type) {
		case json.Number:
			switch {
			case base == "estimated_wait_seconds" || base == "hold_seconds":
				want, _ := v.Float64()
				got, err := strconv.ParseFloat(strings.TrimSuffix(f.Title, " s"), 64)
				if err != nil || got != want || f.Text == "" {
					t.Errorf("%s: shown %q (%q), /status has %s", f.Key, f.Text, f.Title, v)
				}
			case base == "completion_rate":
				want, _ := v.Float64()
				got, err := strconv.ParseFloat(f.Text, 64)
				if err != nil || got < want-0.005 || got > want+0.005 {
					t.Errorf("%s: shown %q, /status has %s", f.Key, f.Text, v)
				}
			case f.Text != v.String():
				t.Errorf("%s: shown %q, /status has %s", f.Key, f.Text, v)
			}
		case string:
			switch {
			case f.Dur:
				if f.Title != v || f.Text == "" {
					t.Errorf("%s: shown %q for %q, /status has %q", f.Key, f.Text, f.Title, v)
				}
			case f.Datetime != "":
				if f.Datetime != v {
					t.Errorf("%s: shown %q for %q, /status has %q", f.Key, f.Text, f.Datetime, v)
				}
			case f.Text != v:
				t.Errorf("%s: shown %q, /status has %q", f.Key, f.Text, v)
			}
		case bool:
			words, ok := liveWords[f.Key]
			want := words[0]
			if v {
				want = words[1]
			}
			if !ok || f.Text != want {
				t.Errorf("%s: shown %q, /status has %v", f.Key, f.Text, v)
			}
		default:
			t.Errorf("%s: shown %q, /status has %v", f.Key, f.Text, v)
		}
	}
}

// liveEval evaluates expr in the page.
func liveEval[T any](ctx context.Context, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// liveWait evaluates expr every 100 ms until it returns want.
func liveWait(ctx context.Context, timeout time.Duration, expr, want string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		got, err := liveEval[string](ctx, expr)
		if err == nil && got == want {
			return nil
		}
		if err == nil {
			last = got
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never became %q (last %q): %w", expr, want, last, ctx.Err())
		case <-tick.C:
		}
	}
}

// liveViolations collects the page's Content-Security-Policy violations:
// the browser runs it before the page's own script, and outside the
// page's policy.
const liveViolations = `window.__violations = [];
document.addEventListener('securitypolicyviolation', e =>
	window.__violations.push(e.effectiveDirective + ' ' + (e.blockedURI || 'inline')));`

func TestBrowserLivePage(t *testing.T) {
	browsertest.Require(t)
	const token = "live-page-admin-token"

	var lim admission.Limits
	lim.Budget = 10
	lim.AnonMax = 4
	lim.Lane[admission.Login] = admission.LaneLimits{Reserved: 1, Max: 2, Queue: 8, QueueTimeout: time.Minute}
	lim.Lane[admission.Core] = admission.LaneLimits{Reserved: 4, Max: 8, Queue: 32, QueueTimeout: 10 * time.Second}
	lim.Lane[admission.Export] = admission.LaneLimits{Max: 1, QueueTimeout: 30 * time.Second}
	ctrl, err := admission.New(lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	ctrl.Constrain(9)
	plane := &livePlane{testPlane: testPlane{mode: admission.Enforce}, room: waitroom.Status{
		Waiting: 14, Away: 6, WaitSeconds: 12.5, CompletionRate: 2.4, HoldSeconds: 3,
		Tickets: map[string]uint64{"issued": 40, "redeemed": 33, "rejected": 1}, Pages: 21, Redirects: 2,
	}}
	pool := &fakePool{st: poolwatch.Status{
		State: poolwatch.StateOK, Follow: true, At: time.Now().Add(-300 * time.Millisecond), Age: 300 * time.Millisecond,
		Reading: poolwatch.Reading{Consoles: 1,
			Pool:     poolwatch.Pool{Database: "app", User: "app", Size: 10, ClActive: 11, ClWaiting: 1, SvActive: 10, SvIdle: 0, SvUsed: 2, MaxWait: 1500 * time.Millisecond, Mode: "transaction"},
			Settings: poolwatch.Settings{QueryWaitTimeout: 5 * time.Second}},
		InFlight: 6, Others: 1, Effective: 9, Static: 10, Reads: 5120, Failures: 2,
	}}
	a := New(plane, ctrl, Options{
		Token: token, Gatherer: prometheus.NewRegistry(),
		Sessions: liveSessions{errorAt: time.Now().Add(-time.Minute)}, SessionStore: "redis",
		Pool: pool, Fleet: liveFleet{expires: time.Now().Add(3 * time.Second)},
	}, nil)
	a.SetReload(ReloadStatus{At: time.Now().Add(-2 * time.Minute).UTC(), OK: false, Error: "LANEGATE_BUDGET=0: must be at least 1"})
	liveLoad(t, ctrl)

	// /status can be made to fail, as a lanegate in trouble would. The
	// browser's requests are noted with the credentials they carry.
	var (
		down   atomic.Bool
		seenMu sync.Mutex
		seen   = map[string]int{}
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.UserAgent(), "Chrome") {
			scheme, _, _ := strings.Cut(r.Header.Get("Authorization"), " ")
			seenMu.Lock()
			seen[r.Method+" "+r.URL.Path+" "+cmp.Or(scheme, "none")]++
			seenMu.Unlock()
		}
		if down.Load() && r.URL.Path == "/status" {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		a.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	opts := browsertest.Options(t, 1280, 800)
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx, opts...)
	defer allocCancel()
	bctx, bcancel := chromedp.NewContext(allocCtx)
	defer bcancel()
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v", browsertest.Chromium, err)
	}

	// Everything the page writes to the console, and its CSP violations.
	var (
		mu       sync.Mutex
		messages []chromedp.ConsoleMessage
	)
	consoleCtx, consoleCancel := context.WithCancel(bctx)
	var consoleDone sync.WaitGroup
	consoleDone.Go(func() {
		for m, err := range chromedp.Console(consoleCtx) {
			if err != nil {
				return
			}
			mu.Lock()
			messages = append(messages, m)
			mu.Unlock()
		}
	})
	defer func() { consoleCancel(); consoleDone.Wait() }()
	consoleSince := func(from int) []chromedp.ConsoleMessage {
		mu.Lock()
		defer mu.Unlock()
		return append([]chromedp.ConsoleMessage(nil), messages[from:]...)
	}
	if err := chromedp.Do(bctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: liveViolations})
		return err
	})); err != nil {
		t.Fatalf("install the violation listener: %v", err)
	}

	// The operator opens the page. The URL's credentials stand for what
	// they would type: the browser sends them only once the page's 401
	// asks for Basic credentials, and keeps them for the polls.
	u, _ := url.Parse(srv.URL)
	u.User = url.UserPassword("operator", token)
	resp, err := chromedp.RunResponse(bctx, chromedp.Navigate(u.String()+"/"))
	if err != nil {
		t.Fatalf("navigate: %v", err)
	}
	if resp.Status != http.StatusOK {
		t.Fatalf("GET /: status %d", resp.Status)
	}

	// The page shows the login lane's two requests in flight, from /status.
	if err := liveWait(bctx, 10*time.Second, `(document.querySelector('[data-k="lanes.login.in_flight"]') || {}).textContent + ' ' + document.body.dataset.state`, "2 live"); err != nil {
		t.Fatalf("the page never showed the login lane: %v", err)
	}
	st, raw := liveStatus(t, srv.URL, token)
	figures, err := liveEval[string](bctx, liveShown)
	if err != nil {
		t.Fatal(err)
	}
	var fs []shown
	if err := json.Unmarshal([]byte(figures), &fs); err != nil {
		t.Fatal(err)
	}
	checkShown(t, st, fs)
	// Every section /status has is shown, and its main figures with it.
	keys := map[string]bool{}
	for _, f := range fs {
		keys[f.Key] = true
	}
	for _, k := range []string{
		"mode", "budget", "static_budget", "in_flight", "bypassed", "anonymous.in_flight",
		"lanes.login.in_flight", "lanes.login.queued", "lanes.login.max", "lanes.login.reserved", "lanes.login.service_time",
		"lanes.login.admitted", "lanes.login.shed", "lanes.core.in_flight", "lanes.export.shed", "lanes.export.decisions.queue_full",
		"waiting_room.waiting", "waiting_room.away", "waiting_room.estimated_wait_seconds", "waiting_room.completion_rate", "waiting_room.tickets.issued",
		"sessions.store", "sessions.healthy", "sessions.entries", "sessions.stats.hits",
		"pool.state", "pool.pool_size", "pool.cl_waiting", "pool.sv_active", "pool.effective_budget", "pool.static_budget", "pool.maxwait",
		"fleet.state", "fleet.members", "fleet.share.login.max", "fleet.fleet.0.id", "fleet.fleet.2.id", "fleet.fleet.2.lease_age",
		"fleet.fleet.1.lanes.core.in_flight", "last_reload.ok", "last_reload.error",
	} {
		if !keys[k] {
			t.Errorf("the page does not show %s", k)
		}
	}
	if t.Failed() {
		t.Logf("/status:\n%s", raw)
	}
	text, _ := liveEval[string](bctx, `document.body.innerText`)
	for _, want := range []string{"Lanes", "Waiting room", "Session cache", "Pool watcher", "Fleet", "lg-c", "enforce"} {
		if !strings.Contains(text, want) {
			t.Errorf("the page's text lacks %q", want)
		}
	}

	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	shots := t.TempDir()
	browsertest.Screenshot(t, shots, "live-page.png", png)

	// No console error, no exception, no CSP violation so far.
	logged := len(consoleSince(0))
	t.Logf("%d console messages", logged)
	for _, m := range consoleSince(0) {
		if m.Type == chromedp.ConsoleError || m.IsException() || m.Type == chromedp.ConsoleWarning {
			t.Errorf("console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
	violations, err := liveEval[[]string](bctx, `window.__violations`)
	if err != nil || len(violations) != 0 {
		t.Errorf("CSP violations %q (%v), want none", violations, err)
	}
	// The policy is in force: an injected style is refused, and HTML
	// cannot be written from a string.
	refused, err := liveEval[string](bctx, `(() => {
		const s = document.createElement('style');
		s.textContent = 'body { background: red }';
		document.head.append(s);
		let html = 'allowed';
		try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); } catch (e) { html = e.name; }
		return getComputedStyle(document.body).backgroundColor + ' ' + html;
	})()`)
	if err != nil || strings.Contains(refused, "255, 0, 0") || !strings.HasSuffix(refused, " TypeError") {
		t.Errorf("injected style and HTML: %q (%v), want both refused", refused, err)
	}
	if err := liveWait(bctx, 2*time.Second, `String(window.__violations.length >= 2)`, "true"); err != nil {
		t.Errorf("the injections were not reported as violations: %v", err)
	}

	// /status fails: stale at once, unreachable after a few failures, and
	// live again when it answers.
	down.Store(true)
	if err := liveWait(bctx, 5*time.Second, `document.body.dataset.state`, "stale"); err != nil {
		t.Errorf("/status failing: %v", err)
	}
	conn, _ := liveEval[string](bctx, `document.getElementById('conn').textContent + ' | ' + document.getElementById('updated').textContent`)
	t.Logf("stale: %s", conn)
	if err := liveWait(bctx, 10*time.Second, `document.body.dataset.state`, "unreachable"); err != nil {
		t.Errorf("/status failing on: %v", err)
	}
	conn, _ = liveEval[string](bctx, `document.getElementById('conn').textContent + ' | ' + document.getElementById('updated').textContent`)
	t.Logf("unreachable: %s", conn)
	if png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)); err == nil {
		browsertest.Screenshot(t, shots, "live-page-unreachable.png", png)
	}
	down.Store(false)
	if err := liveWait(bctx, 10*time.Second, `document.body.dataset.state`, "live"); err != nil {
		t.Errorf("/status back: %v", err)
	}
	// The failed polls are logged by the browser (which shows that the
	// console is listened to); the page throws nothing.
	failedPolls := 0
	for _, m := range consoleSince(logged) {
		if m.IsException() {
			t.Errorf("console: %s (%s:%d)", m, m.URL, m.Line)
		}
		if m.Type == chromedp.ConsoleError && strings.Contains(m.Text, "503") {
			failedPolls++
		}
	}
	if failedPolls == 0 {
		t.Errorf("no console error for the failed polls of /status: %v", consoleSince(logged))
	}

	// The browser was asked for credentials once, on opening the page,
	// and sent them itself with every poll of /status.
	seenMu.Lock()
	t.Logf("the browser's requests: %v", seen)
	if seen["GET / none"] != 1 || seen["GET / Basic"] != 1 || seen["GET /status Basic"] < 5 || len(seen) != 3 {
		t.Errorf("the browser's requests %v: want / refused without credentials, then given them, and every /status with them", seen)
	}
	seenMu.Unlock()

	if err := chromedp.Cancel(bctx); err != nil {
		t.Logf("close the browser: %v", err)
	}
}
