package main

// The session cache end to end: real Django 3.2 + django-allauth 0.51 (the
// storm benchmark's site, with the lanegate_django app) on PostgreSQL,
// served by gunicorn, behind lanegate started as the binary starts.
//
// It needs Debian's python3-django, python3-django-allauth, python3-psycopg2
// and gunicorn, and PostgreSQL on 127.0.0.1:5432 with trust authentication
// for the postgres user. Without them it is skipped, unless
// TEST_REQUIRE_E2E=1 (CI sets it and installs them), when it fails.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/session/redistest"
)

const (
	e2ePython   = "/usr/bin/python3"
	e2eGunicorn = "/usr/bin/gunicorn"
	e2eSecret   = "e2e:end-to-end-identity-secret-0123456789abcdef"
	// e2eRequests is how many authenticated pages each mode serves.
	e2eRequests = 1000
)

// e2eNeeds skips (or, under TEST_REQUIRE_E2E=1, fails) when the stack
// is not installed.
func e2eNeeds(t *testing.T) {
	t.Helper()
	missing := func(what string) {
		if os.Getenv("TEST_REQUIRE_E2E") == "1" {
			t.Fatalf("end-to-end test needs %s (TEST_REQUIRE_E2E=1)", what)
		}
		t.Skipf("end-to-end test skipped: %s is missing; install Debian's python3-django python3-django-allauth python3-psycopg2 gunicorn postgresql", what)
	}
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	if err := exec.Command(e2ePython, "-c", "import django, allauth, psycopg2").Run(); err != nil {
		missing("Django, allauth or psycopg2 for " + e2ePython)
	}
	if _, err := os.Stat(e2eGunicorn); err != nil {
		missing(e2eGunicorn)
	}
	if _, err := exec.LookPath("psql"); err != nil {
		missing("psql")
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:5432", time.Second); err != nil {
		missing("PostgreSQL on 127.0.0.1:5432")
	} else {
		c.Close()
	}
}

// e2eDjango is the Django site under gunicorn, on a database of its own.
type e2eDjango struct {
	url string
	env []string
}

func e2ePsql(ctx context.Context, t *testing.T, sql string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres",
		"-v", "ON_ERROR_STOP=1", "-c", sql).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startDjango(ctx context.Context, t *testing.T) *e2eDjango {
	t.Helper()
	site, err := filepath.Abs("../../bench/site")
	if err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("lanegate_e2e_%d", os.Getpid())
	e2ePsql(ctx, t, "DROP DATABASE IF EXISTS "+db)
	e2ePsql(ctx, t, "CREATE DATABASE "+db)
	t.Cleanup(func() {
		// A fresh context: the test's may be over.
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e2ePsql(cctx, t, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	})
	d := &e2eDjango{env: append(os.Environ(),
		"DJANGO_SETTINGS_MODULE=stormsite.settings",
		"PYTHONPATH="+site,
		"STORM_DB_HOST=127.0.0.1", "STORM_DB_PORT=5432", "STORM_DB_NAME="+db, "STORM_DB_USER=postgres",
		"STORM_PBKDF2_ITERATIONS=1000",
		"STORM_CACHE_DIR="+t.TempDir(),
		"STORM_COUNT_QUERIES=1",
		"STORM_LANEGATE_IDENTITY_SECRET="+e2eSecret,
	)}
	manage := func(args ...string) {
		cmd := exec.CommandContext(ctx, e2ePython, append([]string{filepath.Join(site, "manage.py")}, args...)...)
		cmd.Env, cmd.Dir = d.env, site
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("manage.py %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	manage("migrate", "--noinput")
	manage("seed_storm", "--users", "3", "--projects", "1")

	addr := freePort(t)
	// One worker, so the query counts of /_stats/queries are the whole
	// site's; threads serve concurrent requests.
	cmd := exec.Command(e2eGunicorn, "--workers", "1", "--threads", "8", "--bind", addr,
		"--access-logfile", "-", "--error-logfile", "-", "stormsite.wsgi:application")
	cmd.Env, cmd.Dir = d.env, site
	logf, err := os.Create(filepath.Join(t.TempDir(), "gunicorn.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start gunicorn: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("gunicorn log:\n%s", b)
		}
	})
	d.url = "http://" + addr
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for tick := time.NewTicker(50 * time.Millisecond); ; <-tick.C {
		resp, err := c.Get(d.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				tick.Stop()
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gunicorn not answering on %s: %v", addr, err)
		}
	}
	return d
}

// queries returns the site's query counts and resets them.
func (d *e2eDjango) queries(t *testing.T) map[string]int {
	t.Helper()
	resp, err := http.Post(d.url+"/_stats/queries", "text/plain", nil)
	if err != nil {
		t.Fatalf("query stats: %v", err)
	}
	defer resp.Body.Close()
	var m map[string]int
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("query stats: %v", err)
	}
	return m
}

var csrfInput = regexp.MustCompile(`name="csrfmiddlewaretoken" value="([^"]+)"`)

// e2eBrowser is one user's cookie jar and client, talking to lanegate.
type e2eBrowser struct {
	c    *http.Client
	base string
}

func newBrowser(t *testing.T, base string) *e2eBrowser {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &e2eBrowser{base: base, c: &http.Client{
		Jar: jar, Transport: tr, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (b *e2eBrowser) get(t *testing.T, path string) (int, string, http.Header) {
	t.Helper()
	resp, err := b.c.Get(b.base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// postForm posts to path with the CSRF token of the form page at formPath.
func (b *e2eBrowser) postForm(t *testing.T, formPath, path string, form url.Values) (int, http.Header) {
	t.Helper()
	_, page, _ := b.get(t, formPath)
	m := csrfInput.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token on %s:\n%.500s", formPath, page)
	}
	form.Set("csrfmiddlewaretoken", m[1])
	req, _ := http.NewRequest(http.MethodPost, b.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Referer", b.base+formPath)
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header
}

func (b *e2eBrowser) sessionCookie() string {
	u, _ := url.Parse(b.base)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == "sessionid" {
			return c.Value
		}
	}
	return ""
}

// TestDjangoEndToEnd logs a user in through lanegate, serves e2eRequests
// authenticated pages and logs out, once per session store, and compares
// the django_session reads Django made.
func TestDjangoEndToEnd(t *testing.T) {
	e2eNeeds(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dj := startDjango(ctx, t)
	rs := redistest.Start(t)

	reads := map[string]int{}
	for _, mode := range []struct {
		name string
		env  []string
	}{
		{"off", []string{"LANEGATE_SESSION_STORE=off"}},
		{"memory", []string{"LANEGATE_SESSION_STORE=memory"}},
		{"redis", []string{"LANEGATE_SESSION_STORE=redis", "LANEGATE_REDIS_URL=" + rs.URL()}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			in := start(ctx, t, environ(dj.url, append([]string{
				"LANEGATE_IDENTITY_SECRET=" + e2eSecret,
				"LANEGATE_ACCESS_LOG=false",
				"LANEGATE_DB_POOL_SIZE=20",
			}, mode.env...)...))
			b := newBrowser(t, "http://"+in.addrs.Proxy)
			dj.queries(t) // reset

			status, hdr := b.postForm(t, "/accounts/login/", "/accounts/login/",
				url.Values{"login": {"storm0001"}, "password": {"storm-password"}})
			if status != http.StatusFound || hdr.Get("Location") != "/dashboard/" {
				t.Fatalf("login: got %d to %q, want 302 to /dashboard/", status, hdr.Get("Location"))
			}
			for _, h := range []string{"X-Lanegate-Grant", "X-Lanegate-Revoke"} {
				if hdr.Get(h) != "" {
					t.Errorf("login response carries %s to the client", h)
				}
			}
			cookie := b.sessionCookie()
			if cookie == "" {
				t.Fatal("no session cookie after login")
			}
			loginQueries := dj.queries(t)

			for i := range e2eRequests {
				status, body, hdr := b.get(t, "/dashboard/")
				if status != http.StatusOK || !strings.Contains(body, "storm0001") {
					t.Fatalf("request %d: got %d, want 200 naming storm0001:\n%.300s", i, status, body)
				}
				if hdr.Get("X-Lanegate-Grant") != "" || hdr.Get("X-Lanegate-Revoke") != "" {
					t.Fatalf("request %d: lanegate header reached the client", i)
				}
			}
			q := dj.queries(t)
			reads[mode.name] = q["SELECT django_session"]
			t.Logf("%s: %d authenticated pages made %d django_session reads and %d auth_user reads (login: %v)",
				mode.name, e2eRequests, q["SELECT django_session"], q["SELECT auth_user"], loginQueries)

			// Logout ends trust at once: the old cookie, replayed, is
			// anonymous to Django on the very next request.
			if status, _ := b.postForm(t, "/dashboard/", "/accounts/logout/", url.Values{}); status != http.StatusFound {
				t.Fatalf("logout: got %d, want 302", status)
			}
			replay := newBrowser(t, "http://"+in.addrs.Proxy)
			u, _ := url.Parse(replay.base)
			replay.c.Jar.SetCookies(u, []*http.Cookie{{Name: "sessionid", Value: cookie}})
			status, _, hdr = replay.get(t, "/dashboard/")
			if status != http.StatusFound || !strings.HasPrefix(hdr.Get("Location"), "/accounts/login/") {
				t.Fatalf("old cookie after logout: got %d to %q, want 302 to the login page", status, hdr.Get("Location"))
			}

			// A forged identity from the client is stripped before Django.
			forger := newBrowser(t, "http://"+in.addrs.Proxy)
			req, _ := http.NewRequest(http.MethodGet, forger.base+"/dashboard/", nil)
			req.Header.Set("X-Lanegate-Identity", "v1.e2e.eyJ0eXAiOiJpZGVudGl0eSJ9.AAAA")
			req.Header.Set("Cookie", "sessionid="+cookie)
			resp, err := forger.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("forged identity: got %d, want 302 to the login page", resp.StatusCode)
			}
		})
	}
	if t.Failed() {
		return
	}
	t.Logf("django_session reads per %d authenticated requests: off %d, memory %d, redis %d",
		e2eRequests, reads["off"], reads["memory"], reads["redis"])
	if reads["off"] < e2eRequests {
		t.Errorf("without the cache: %d django_session reads for %d pages; the count is broken", reads["off"], e2eRequests)
	}
	for _, m := range []string{"memory", "redis"} {
		// At most one read per session per TTL: the login's grant makes
		// even that one unnecessary.
		if reads[m] > 1 {
			t.Errorf("%s store: %d django_session reads for %d pages of one session, want at most 1", m, reads[m], e2eRequests)
		}
	}
}
