package proxy

// A person in a real browser (headless Chromium driven by chromedp) meets
// the login waiting room: scripts keep a slow login app busy, the person
// opening the login page sees the waiting page with their place, the page
// moves on by itself, the form appears at their turn, and they type their
// password once and land on their home page.
//
// Chromium is Debian's /usr/bin/chromium (apt-get install chromium). The
// test is skipped without it unless TEST_REQUIRE_BROWSER=1. It talks only
// to 127.0.0.1: every other host name resolves to nothing, and no proxy or
// background service of the browser is used. Screenshots go to the test's
// temporary directory and, when LANEGATE_SCREENSHOT_DIR is set, there too.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/internal/browsertest"
	"github.com/lanegate/lanegate/reply"
	"github.com/lanegate/lanegate/waitroom"
)

// roomDjango is a Django-like login app: GET /accounts/login/ serves the
// form, a POST to it takes one login slot from pace (the test's pacing of
// how fast the app completes logins) and then signs the user in: a session
// cookie and 302 to /home/ for a browser, JSON for a script. /home/ greets
// the session's user.
type roomDjango struct {
	pace chan struct{}
	done chan struct{}
	once sync.Once

	mu       sync.Mutex
	posts    []roomDjangoPost
	sessions map[string]string
	served   atomic.Int64 // logins completed
}

// roomDjangoPost is one login POST the app received.
type roomDjangoPost struct {
	User, Password, FetchMode string
	At                        time.Time
}

func roomNewDjango() *roomDjango {
	return &roomDjango{pace: make(chan struct{}), done: make(chan struct{}), sessions: map[string]string{}}
}

func (d *roomDjango) Close() { d.once.Do(func() { close(d.done) }) }

// Posts returns the login POSTs received from user.
func (d *roomDjango) Posts(user string) []roomDjangoPost {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []roomDjangoPost
	for _, p := range d.posts {
		if p.User == user {
			out = append(out, p)
		}
	}
	return out
}

const roomDjangoForm = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body style="font-family:sans-serif;max-width:30rem;margin:4rem auto">
<h1>Sign in</h1>
<form method="post" action="/accounts/login/">
<p><label for="id_login">Username</label> <input type="text" name="login" id="id_login" autocomplete="username"></p>
<p><label for="id_password">Password</label> <input type="password" name="password" id="id_password" autocomplete="current-password"></p>
<p><button type="submit" id="submit">Sign in</button></p>
</form></body></html>
`

func (d *roomDjango) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == roomLoginPath && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, roomDjangoForm)
	case r.URL.Path == roomLoginPath && r.Method == http.MethodPost:
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		user := r.PostForm.Get("login")
		d.mu.Lock()
		d.posts = append(d.posts, roomDjangoPost{User: user, Password: r.PostForm.Get("password"), FetchMode: r.Header.Get("Sec-Fetch-Mode"), At: time.Now()})
		d.mu.Unlock()
		// Hashing the password, holding a database connection: as long
		// as the test's pace says.
		select {
		case <-d.pace:
		case <-d.done:
		case <-r.Context().Done():
			return
		}
		d.served.Add(1)
		if reply.WantsJSON(r) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"ok":true,"user":%q}`, user)
			return
		}
		var b [16]byte
		rand.Read(b[:])
		sid := hex.EncodeToString(b[:])
		d.mu.Lock()
		d.sessions[sid] = user
		d.mu.Unlock()
		http.SetCookie(w, &http.Cookie{Name: "sessionid", Value: sid, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		http.Redirect(w, r, "/home/", http.StatusFound)
	case r.URL.Path == "/home/":
		c, err := r.Cookie("sessionid")
		d.mu.Lock()
		user, ok := "", false
		if err == nil {
			user, ok = d.sessions[c.Value]
		}
		d.mu.Unlock()
		if !ok {
			http.Redirect(w, r, roomLoginPath, http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><html><head><title>Home</title></head><body><h1 id="welcome">Welcome %s</h1></body></html>`, html.EscapeString(user))
	default:
		http.NotFound(w, r)
	}
}

// roomPacer lets the app complete one login every interval while running.
type roomPacer struct {
	running atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

func roomStartPacer(d *roomDjango, every time.Duration) *roomPacer {
	p := &roomPacer{stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			if p.running.Load() {
				select {
				case d.pace <- struct{}{}: // a login in the app completes
				default: // none there this tick
				}
			}
		}
	}()
	return p
}

func (p *roomPacer) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

// roomScriptLogin is an API client signing in: it posts asking for JSON
// and, sent away with a ticket, comes back with it after Retry-After.
func roomScriptLogin(ctx context.Context, c *http.Client, base, user string) (attempts int, err error) {
	ticket := ""
	for attempts = 1; attempts <= 100; attempts++ {
		form := url.Values{"login": {user}, "password": {roomPassword(user)}}.Encode()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+roomLoginPath, strings.NewReader(form))
		if err != nil {
			return attempts, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		if ticket != "" {
			req.Header.Set(waitroom.TicketHeader, ticket)
		}
		resp, err := c.Do(req)
		if err != nil {
			return attempts, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return attempts, nil
		case http.StatusServiceUnavailable:
			if t := resp.Header.Get(waitroom.TicketHeader); t != "" {
				ticket = t
			}
			secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			timer := time.NewTimer(time.Duration(min(max(secs, 1), 5)) * time.Second)
			select {
			case <-ctx.Done():
				timer.Stop()
				return attempts, ctx.Err()
			case <-timer.C:
			}
		default:
			return attempts, fmt.Errorf("status %d", resp.StatusCode)
		}
	}
	return attempts, errors.New("gave up")
}

// roomEval evaluates expr in the page, for polling across navigations:
// while a page is replaced the evaluation fails, and the caller retries.
func roomEval[T any](ctx context.Context, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// roomPoll evaluates expr every 100 ms until it returns want or ctx ends.
func roomPoll(ctx context.Context, expr, want string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		got, err := roomEval[string](ctx, expr)
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

// pageKind tells the page the browser shows: the waiting page, the form,
// the home page, or something else.
const roomPageKind = `document.getElementById('lanegate-place') ? 'waiting' :
	document.getElementById('id_password') ? 'form' :
	document.getElementById('welcome') ? 'home' : 'other:' + location.pathname`

func TestBrowserWaitingRoomLogin(t *testing.T) {
	browsertest.Require(t)
	began := time.Now()
	const (
		hold = 3 * time.Second
		pace = 400 * time.Millisecond // the app completes a login every 400 ms
		// Enough that, with the login lane's capacity as the floor of
		// the rate estimate, the line is more than half a hold long.
		scripts = 14
		person  = "person"
		secret  = "correct horse battery staple"
	)

	django := roomNewDjango()
	up := testUpstream(t, django)
	keys := roomKeyring(t, roomSecret)
	limits := roomLimits(hold)
	limits.Lane[admission.Login] = admission.LaneLimits{Reserved: 1, Max: 1, Queue: 32, QueueTimeout: hold}
	p := testNewProxy(t, up.URL, limits, Options{WaitingRoom: true, Tickets: keys})
	pacer := roomStartPacer(django, pace)
	t.Cleanup(func() { // runs before the servers close
		pacer.Stop()
		django.Close()
	})

	// The whole test is bounded: the browser dies with this context.
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()

	// Scripts sign in, keeping the login lane busy.
	type scriptResult struct {
		user     string
		attempts int
		err      error
	}
	results := make(chan scriptResult, scripts)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // scripts stop on failure paths before wg.Wait
	for i := range scripts {
		user := "script" + strconv.Itoa(i)
		wg.Go(func() {
			n, err := roomScriptLogin(ctx, p.Client, p.Server.URL, user)
			results <- scriptResult{user, n, err}
		})
	}
	// The app warms up: a few logins complete at its pace, so lanegate has
	// measured its rate. Then it stalls while the person arrives.
	pacer.running.Store(true)
	testWaitFor(t, "3 logins completed", func() bool { return django.served.Load() >= 3 })
	pacer.running.Store(false)
	testWaitFor(t, "a new arrival's turn more than half a hold away", func() bool {
		_, wait := p.Ctrl.Line(0, time.Time{})
		return p.Ctrl.LoginCongested() && wait > hold/2+hold/4
	})

	// The browser.
	opts := browsertest.Options(t, 900, 640)
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx, opts...)
	defer allocCancel() // kills Chromium and waits for it
	bctx, bcancel := chromedp.NewContext(allocCtx)
	defer bcancel()
	started := time.Now()
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		t.Fatalf("start %s: %v", browsertest.Chromium, err)
	}
	t.Logf("Chromium started in %s", time.Since(started).Round(time.Millisecond))

	// The person opens the login page: the waiting page, with a place.
	loginURL := p.Server.URL + roomLoginPath
	resp, err := chromedp.RunResponse(bctx, chromedp.Navigate(loginURL))
	if err != nil {
		t.Fatalf("navigate to %s: %v", loginURL, err)
	}
	if resp.Status != http.StatusServiceUnavailable {
		t.Fatalf("login page: status %d, want the waiting page's 503", resp.Status)
	}
	kind, err := roomEval[string](bctx, roomPageKind)
	if err != nil || kind != "waiting" {
		t.Fatalf("the browser shows %q (%v), want the waiting page", kind, err)
	}
	placeText, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("#lanegate-place")))
	if err != nil {
		t.Fatalf("read #lanegate-place: %v", err)
	}
	waitText, _ := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("#lanegate-wait")))
	place, err := strconv.Atoi(strings.TrimSpace(placeText))
	if err != nil || place < 2 {
		t.Fatalf("#lanegate-place %q: want a place behind the scripts", placeText)
	}
	t.Logf("waiting page: place %d, expected wait %s", place, waitText)
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	shots := t.TempDir()
	browsertest.Screenshot(t, shots, "waiting-page.png", png)

	// The app moves again; the page refreshes itself until the form shows.
	pacer.running.Store(true)
	waitStart := time.Now()
	formCtx, formCancel := context.WithTimeout(bctx, 35*time.Second)
	err = roomPoll(formCtx, roomPageKind, "form")
	formCancel()
	if err != nil {
		t.Fatalf("the login form never appeared: %v", err)
	}
	pages := p.Handler.room.Pages()
	t.Logf("form shown after %s on the waiting page (%d waiting pages served in all)", time.Since(waitStart).Round(time.Millisecond), pages)
	if len(django.Posts(person)) != 0 {
		t.Fatal("the person's login reached the app before they typed it")
	}

	// They type their password once and submit once.
	if err := chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.CSS("#id_login"), person),
		chromedp.SendKeys(chromedp.CSS("#id_password"), secret),
		chromedp.Click(chromedp.CSS("#submit")),
	); err != nil {
		t.Fatalf("fill in and submit the form: %v", err)
	}
	homeCtx, homeCancel := context.WithTimeout(bctx, 20*time.Second)
	err = roomPoll(homeCtx, roomPageKind, "home")
	homeCancel()
	if err != nil {
		t.Fatalf("never landed on the home page: %v", err)
	}
	loc, _ := chromedp.Run(bctx, chromedp.Location())
	welcome, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("#welcome")))
	if err != nil || welcome != "Welcome "+person || !strings.HasSuffix(loc, "/home/") {
		t.Fatalf("final page %s says %q (%v), want /home/ saying %q", loc, welcome, err, "Welcome "+person)
	}
	if png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)); err == nil {
		browsertest.Screenshot(t, shots, "welcome.png", png)
	}

	// The password went to the app exactly once, as typed.
	posts := django.Posts(person)
	if len(posts) != 1 || posts[0].Password != secret {
		t.Fatalf("the app got %d POSTs from %s (%+v), want exactly one with the typed password", len(posts), person, posts)
	}
	if posts[0].FetchMode != "navigate" {
		t.Logf("note: the browser's POST had Sec-Fetch-Mode %q", posts[0].FetchMode)
	}

	// The browser goes first, before the scripts are awaited: goleak wants
	// chromedp's goroutines gone when the test ends.
	if err := chromedp.Cancel(bctx); err != nil {
		t.Logf("close the browser: %v", err)
	}
	bcancel()
	allocCancel()

	// Every script signed in, each reaching the app once.
	for range scripts {
		select {
		case r := <-results:
			if r.err != nil {
				t.Errorf("%s: %v after %d attempts", r.user, r.err, r.attempts)
			}
			if n := len(django.Posts(r.user)); n != 1 {
				t.Errorf("%s reached the app %d times, want 1", r.user, n)
			}
		case <-ctx.Done():
			t.Fatalf("scripts still signing in when the test's time ran out")
		}
	}
	testWaitIdle(t, p.Ctrl)
	st := p.Ctrl.Snapshot().Room
	t.Logf("room at the end: %+v; browser test took %s", st, time.Since(began).Round(time.Millisecond))
	// Every place handed out (the person's on the waiting page, the
	// scripts' sent away) came back and was used.
	if st.Issued < 1 || st.Redeemed != st.Issued || st.Rejected != 0 || st.Away != 0 {
		t.Errorf("room %+v: want every ticket issued redeemed, none refused", st)
	}
}
