package admin

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/lanegate/lanegate/admission"
)

// newLiveAdmin is an admin server over a small real controller, with
// token (none when empty).
func newLiveAdmin(t *testing.T, token string) *Server {
	t.Helper()
	var lim admission.Limits
	lim.Budget = 4
	lim.Lane[admission.Core] = admission.LaneLimits{Reserved: 2, Max: 4}
	lim.Lane[admission.Login] = admission.LaneLimits{Reserved: 1, Max: 2}
	a, _, _ := newTestAdmin(t, lim, Options{Token: token})
	return a
}

// cspDirectives splits a Content-Security-Policy into its directives.
func cspDirectives(policy string) map[string][]string {
	out := map[string][]string{}
	for d := range strings.SplitSeq(policy, ";") {
		f := strings.Fields(d)
		if len(f) > 0 {
			out[f[0]] = f[1:]
		}
	}
	return out
}

func TestLivePageServed(t *testing.T) {
	a := newLiveAdmin(t, "")
	rec := adminDo(a, http.MethodGet, "http://127.0.0.1:9090/", "", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /: %d %s", rec.Code, rec.Body)
	}
	hd := rec.Header()
	for name, want := range map[string]string{
		"Content-Type":                 "text/html; charset=utf-8",
		"Cache-Control":                "no-store",
		"X-Content-Type-Options":       "nosniff",
		"X-Frame-Options":              "DENY",
		"Referrer-Policy":              "no-referrer",
		"Cross-Origin-Resource-Policy": "same-origin",
		"Content-Length":               strconv.Itoa(len(livePage)),
	} {
		if got := hd.Get(name); got != want {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
	}
	if rec.Body.String() != string(livePage) {
		t.Errorf("body is not the embedded page (%d bytes, want %d)", rec.Body.Len(), len(livePage))
	}
	csp := cspDirectives(hd.Get("Content-Security-Policy"))
	for name, want := range map[string]string{
		"default-src":               "'none'",
		"connect-src":               "'self'",
		"frame-ancestors":           "'none'",
		"base-uri":                  "'none'",
		"form-action":               "'none'",
		"require-trusted-types-for": "'script'",
	} {
		if got := strings.Join(csp[name], " "); got != want {
			t.Errorf("CSP %s: got %q, want %q (policy %q)", name, got, want, hd.Get("Content-Security-Policy"))
		}
	}
	// Nothing but hashes may run or style: no 'unsafe-inline', no host.
	for _, name := range []string{"script-src", "style-src"} {
		if len(csp[name]) == 0 {
			t.Errorf("CSP has no %s", name)
		}
		for _, src := range csp[name] {
			if !strings.HasPrefix(src, "'sha256-") {
				t.Errorf("CSP %s allows %s, want hashes only", name, src)
			}
		}
	}
}

func TestLivePageHead(t *testing.T) {
	a := newLiveAdmin(t, "")
	rec := adminDo(a, http.MethodHead, "http://localhost:9090/", "", "")
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Fatalf("HEAD /: %d with %d bytes of body, want 200 and none", rec.Code, rec.Body.Len())
	}
	if got := rec.Header().Get("Content-Length"); got != strconv.Itoa(len(livePage)) {
		t.Errorf("HEAD / Content-Length %q, want %d", got, len(livePage))
	}
	if rec.Header().Get("Content-Security-Policy") == "" {
		t.Error("HEAD / has no Content-Security-Policy")
	}
}

// The page is as protected as /status, whose figures it shows.
func TestLivePageAuth(t *testing.T) {
	const token = "s3cret-admin-token"
	withToken := newLiveAdmin(t, token)
	without := newLiveAdmin(t, "")
	tests := []struct {
		name   string
		a      *Server
		target string
		auth   string
		want   int
	}{
		{"token, none given", withToken, "http://lb.internal:9090/", "", http.StatusUnauthorized},
		{"token, wrong bearer", withToken, "http://lb.internal:9090/", "Bearer nope", http.StatusUnauthorized},
		{"token, bare", withToken, "http://lb.internal:9090/", token, http.StatusUnauthorized},
		{"token, in the query", withToken, "http://lb.internal:9090/?token=" + token, "", http.StatusUnauthorized},
		{"token, bearer", withToken, "http://lb.internal:9090/", "Bearer " + token, http.StatusOK},
		{"no token, foreign Host", without, "http://evil.example:9090/", "", http.StatusForbidden},
		{"no token, loopback Host", without, "http://[::1]:9090/", "", http.StatusOK},
	}
	for _, tt := range tests {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			rec := adminDo(tt.a, method, tt.target, tt.auth, "")
			if rec.Code != tt.want {
				t.Errorf("%s: %s: got %d, want %d", tt.name, method, rec.Code, tt.want)
			}
			if rec.Code == http.StatusUnauthorized && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: WWW-Authenticate %q, want a Bearer challenge", tt.name, rec.Header().Get("WWW-Authenticate"))
			}
			if rec.Code != http.StatusOK && (strings.Contains(rec.Body.String(), "<html") || strings.Contains(rec.Body.String(), token)) {
				t.Errorf("%s: refused with %q", tt.name, rec.Body)
			}
		}
	}
}

func TestLivePageOnlyAtRoot(t *testing.T) {
	a := newLiveAdmin(t, "")
	for _, path := range []string{"/index.html", "/live", "/favicon.ico", "/status/", "/healthz/x", "/admin/"} {
		if got := adminDo(a, http.MethodGet, "http://127.0.0.1:9090"+path, "", "").Code; got != http.StatusNotFound {
			t.Errorf("GET %s: got %d, want 404", path, got)
		}
	}
	if got := adminDo(a, http.MethodGet, "http://127.0.0.1:9090/?refresh=1", "", "").Code; got != http.StatusOK {
		t.Errorf("GET /?refresh=1: got %d, want the page", got)
	}
	if got := adminDo(a, http.MethodPost, "http://127.0.0.1:9090/", "", "x").Code; got != http.StatusMethodNotAllowed {
		t.Errorf("POST /: got %d, want 405", got)
	}
}

var (
	// htmlTag matches a start tag and its attributes.
	htmlTag = regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[^>]*)?)>`)
	// htmlAttr matches one attribute, quoted, unquoted or bare.
	htmlAttr = regexp.MustCompile(`([^\s"'=/>]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?`)
	// inlineBlock matches a script or style element and its contents.
	inlineBlock = regexp.MustCompile(`(?s)<(script|style)((?:\s+[^>]*)?)>(.*?)</(?:script|style)>`)
)

// The page is self-contained: its script and style are inline, allowed by
// their hashes, and nothing in it points outside it.
func TestLivePageSelfContained(t *testing.T) {
	page := string(livePage)
	csp := cspDirectives(livePolicy)
	blocks := inlineBlock.FindAllStringSubmatch(page, -1)
	kinds := map[string]int{}
	for _, b := range blocks {
		kind, attrs, body := b[1], strings.TrimSpace(b[2]), b[3]
		kinds[kind]++
		if attrs != "" {
			t.Errorf("<%s %s>: inline %s must have no attributes (no src, no type)", kind, attrs, kind)
		}
		sum := sha256.Sum256([]byte(body))
		src := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
		found := false
		for _, s := range csp[kind+"-src"] {
			found = found || s == src
		}
		if !found {
			t.Errorf("the CSP's %s-src %v lacks the hash %s of a <%s> of the page", kind, csp[kind+"-src"], src, kind)
		}
		if kind == "style" && (strings.Contains(body, "url(") || strings.Contains(body, "@import")) {
			t.Errorf("the style loads something: %q", body)
		}
	}
	if kinds["script"] != 1 || kinds["style"] != 1 {
		t.Errorf("the page has %d scripts and %d styles, want one of each", kinds["script"], kinds["style"])
	}
	// Outside the script and style, every tag's attributes.
	markup := inlineBlock.ReplaceAllString(page, "")
	forbidden := map[string]bool{"iframe": true, "frame": true, "object": true, "embed": true, "img": true,
		"base": true, "form": true, "audio": true, "video": true, "source": true, "svg": true}
	for _, m := range htmlTag.FindAllStringSubmatch(markup, -1) {
		tag := strings.ToLower(m[1])
		if forbidden[tag] {
			t.Errorf("the page has a <%s>", tag)
		}
		for _, at := range htmlAttr.FindAllStringSubmatch(m[2], -1) {
			name := strings.ToLower(at[1])
			val := strings.Trim(at[2], `"'`)
			switch {
			case strings.HasPrefix(name, "on"):
				t.Errorf("<%s %s=…>: inline event handler", tag, name)
			case name == "style":
				t.Errorf("<%s style=…>: inline style attribute", tag)
			case name == "src", name == "href", name == "action", name == "formaction", name == "srcset",
				name == "poster", name == "data", name == "xlink:href", name == "ping", name == "background", name == "manifest":
				// Only the empty data: favicon, which keeps the browser from
				// asking for /favicon.ico.
				if !(tag == "link" && name == "href" && val == "data:,") {
					t.Errorf("<%s %s=%q>: points outside the page", tag, name, val)
				}
			}
		}
		if tag == "link" && !strings.Contains(m[2], `rel="icon"`) {
			t.Errorf("<link%s>: only the empty icon may be linked", m[2])
		}
	}
	for _, s := range []string{"http:", "https:", "//cdn", "ws:", "wss:", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(page, s) {
			t.Errorf("the page contains %q", s)
		}
	}
}

// A browser gives the token as the password of Basic credentials, which
// it asks for itself; they open the page and its /status, nothing else.
func TestLivePageBasicAuth(t *testing.T) {
	const token = "s3cret-admin-token"
	a := newLiveAdmin(t, token)
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	for _, path := range []string{"/", "/status"} {
		for _, tt := range []struct {
			name, auth string
			want       int
		}{
			{"any user", basic("operator", token), http.StatusOK},
			{"no user", basic("", token), http.StatusOK},
			{"token as the user", basic(token, ""), http.StatusUnauthorized},
			{"wrong password", basic("operator", token+"x"), http.StatusUnauthorized},
			{"not base64", "Basic " + token, http.StatusUnauthorized},
		} {
			rec := adminDo(a, http.MethodGet, "http://lb.internal:9090"+path, tt.auth, "")
			if rec.Code != tt.want {
				t.Errorf("GET %s, %s: got %d, want %d", path, tt.name, rec.Code, tt.want)
			}
			if rec.Code != http.StatusUnauthorized {
				continue
			}
			// The browser is asked for Basic credentials; a script sees
			// the Bearer challenge first, as before.
			ch := rec.Header().Values("WWW-Authenticate")
			if len(ch) != 2 || !strings.HasPrefix(ch[0], "Bearer ") || !strings.HasPrefix(ch[1], "Basic ") {
				t.Errorf("GET %s, %s: WWW-Authenticate %q, want a Bearer then a Basic challenge", path, tt.name, ch)
			}
		}
	}
	// Elsewhere Basic credentials are refused, and not asked for.
	for _, ep := range []struct{ method, path, body string }{
		{http.MethodGet, "/metrics", ""},
		{http.MethodGet, "/admission", ""},
		{http.MethodPut, "/admission", "off"},
	} {
		rec := adminDo(a, ep.method, "http://lb.internal:9090"+ep.path, basic("operator", token), ep.body)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("%s %s with Basic credentials: got %d, want 401", ep.method, ep.path, rec.Code)
		}
		if ch := rec.Header().Values("WWW-Authenticate"); len(ch) != 1 || !strings.HasPrefix(ch[0], "Bearer ") {
			t.Errorf("%s %s: WWW-Authenticate %q, want the Bearer challenge alone", ep.method, ep.path, ch)
		}
	}
	// /status, readable with credentials a browser sends by itself, may
	// not be loaded by another site's page.
	rec := adminDo(a, http.MethodGet, "http://lb.internal:9090/status", "Bearer "+token, "")
	if rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("Cross-Origin-Resource-Policy") != "same-origin" {
		t.Errorf("/status headers %v: want nosniff and a same-origin resource policy", rec.Header())
	}
}
