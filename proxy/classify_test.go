package proxy

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/lanegate/lanegate/admission"
)

// testRules look like a typical Django site's. They overlap on purpose, so
// that the tests pin down which rule wins.
var testRules = Rules{
	Login: []string{
		"/accounts/login/",
		"/accounts/signup/",
		"/accounts/password/reset/",
		"/api/token", // exact: an API endpoint without APPEND_SLASH
		"/public/login/",
	},
	Export: []string{
		"/reports/",
		"/media/exports/",
	},
	Bypass: []string{
		"/static/",
		"/media/",
		"/public/",
		"/favicon.ico",
	},
}

var (
	login  = Class{Lane: admission.Login}
	export = Class{Lane: admission.Export}
	core   = Class{Lane: admission.Core}
	bypass = Class{Lane: admission.Core, Bypass: true}
)

func newTestClassifier(t testing.TB) *Classifier {
	t.Helper()
	c, err := NewClassifier(testRules)
	if err != nil {
		t.Fatalf("NewClassifier: got error %v, want nil", err)
	}
	return c
}

func TestClassify(t *testing.T) {
	c := newTestClassifier(t)
	tests := []struct {
		method, path string
		want         Class
	}{
		// Login only for unsafe methods.
		{"POST", "/accounts/login/", login},
		{"GET", "/accounts/login/", core},
		{"HEAD", "/accounts/login/", core},
		{"OPTIONS", "/accounts/login/", core},
		{"TRACE", "/accounts/login/", core},
		{"PUT", "/accounts/login/", login},
		{"PATCH", "/accounts/signup/", login},
		{"DELETE", "/accounts/password/reset/", login},
		// Methods are case-sensitive: anything unknown is unsafe.
		{"post", "/accounts/login/", login},
		{"get", "/accounts/login/", login},
		{"BREW", "/accounts/login/", login},
		{"", "/accounts/login/", login},

		// A directory rule covers its subtree and the path without slash.
		{"POST", "/accounts/login", login},
		{"POST", "/accounts/password/reset/done/", login},
		{"POST", "/accounts/password/reset/key/abc-123/", login},
		{"POST", "/accounts/loginx", core},
		{"POST", "/accounts/", core},
		{"POST", "/accounts", core},
		// An exact rule covers that path only.
		{"POST", "/api/token", login},
		{"POST", "/api/token/", core},
		{"POST", "/api/tokens", core},

		// Cleaning: every spelling of a login path is login.
		{"POST", "//accounts//login/", login},
		{"POST", "/accounts/./login/", login},
		{"POST", "/static/../accounts/login/", login},
		{"POST", "/../../accounts/login/", login},
		{"POST", "/accounts/login/.", login},
		{"POST", "/accounts/login/x/..", login},
		{"POST", "/accounts/login//", login},
		{"POST", "accounts/login/", login},
		{"POST", "/api//token", login},
		{"POST", "/api/token/.", login},

		// Export for every method, before bypass.
		{"GET", "/reports/", export},
		{"GET", "/reports", export},
		{"POST", "/reports/monthly.csv", export},
		{"HEAD", "/reports/monthly.csv", export},
		{"GET", "/media/exports/x.csv", export},
		{"GET", "/media/../reports/x", export},

		// Bypass for GET and HEAD only.
		{"GET", "/static/app.css", bypass},
		{"HEAD", "/static/app.css", bypass},
		{"GET", "/static/", bypass},
		{"GET", "/static", bypass},
		{"OPTIONS", "/static/app.css", core},
		{"POST", "/static/x", core},
		{"POST", "/media/upload/", core},
		{"get", "/static/app.css", core},
		{"GET", "/static/../dashboard/", core},
		{"GET", "/static/%2e%2e/dashboard/", bypass}, // literal "%2e%2e": already decoded once
		{"GET", "/favicon.ico", bypass},
		{"GET", "/favicon.icox", core},
		{"GET", "/favicon.ico/", core},
		{"GET", "/staticfoo", core},
		{"GET", "/staticfoo/app.css", core},

		// Login wins over bypass for unsafe methods only.
		{"POST", "/public/login/", login},
		{"GET", "/public/login/", bypass},
		{"POST", "/public/about/", core},

		// Core for everything else.
		{"GET", "/", core},
		{"GET", "", core},
		{"POST", "/dashboard/", core},
		{"OPTIONS", "*", core},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			if got := c.Classify(tt.method, tt.path); got != tt.want {
				t.Errorf("Classify(%q, %q): got %v, want %v", tt.method, tt.path, got, tt.want)
			}
		})
	}
}

// TestClassifyRequest parses raw requests with net/http, as the server does,
// so that percent-decoding and request-target forms are those of real
// traffic rather than what the test author assumed.
func TestClassifyRequest(t *testing.T) {
	c := newTestClassifier(t)
	tests := []struct {
		line string // request line, without CRLF
		want Class
	}{
		{"POST /accounts/login/ HTTP/1.1", login},
		{"POST /static/..%2Faccounts/login/ HTTP/1.1", login},
		{"POST /static/..%2faccounts%2flogin%2f HTTP/1.1", login},
		{"POST //accounts//login/ HTTP/1.1", login},
		{"POST ///accounts/login/ HTTP/1.1", login},
		{"POST /accounts/./login/ HTTP/1.1", login},
		{"POST /static/%2e%2e/accounts/login/ HTTP/1.1", login},
		{"POST /static/%2E%2E/accounts/login/ HTTP/1.1", login},
		{"POST /static/.%2e/accounts/login/ HTTP/1.1", login},
		{"POST /%61ccounts/login/ HTTP/1.1", login},
		{"POST /accounts/login HTTP/1.1", login},
		{"POST /accounts/login/?next=/static/ HTTP/1.1", login},
		{"POST /accounts/login/#frag HTTP/1.1", login},
		{"POST http://example.com/accounts/login/ HTTP/1.1", login},
		{"POST http://example.com//static/../accounts/login/ HTTP/1.1", login},
		{"POST /api/token HTTP/1.1", login},
		{"post /accounts/login/ HTTP/1.1", login},

		{"GET /accounts/login/ HTTP/1.1", core},
		{"GET /static/app.css HTTP/1.1", bypass},
		{"HEAD /static/app.css HTTP/1.1", bypass},
		{"POST /static/x HTTP/1.1", core},
		{"GET /static/../dashboard/ HTTP/1.1", core},
		{"GET /static/%2e%2e/dashboard/ HTTP/1.1", core},
		{"GET /static/..%2fdashboard/ HTTP/1.1", core},
		{"GET /favicon.ico HTTP/1.1", bypass},
		{"GET /favicon.icox HTTP/1.1", core},
		{"GET /staticfoo HTTP/1.1", core},
		{"GET /reports/q3.csv HTTP/1.1", export},
		{"GET http://example.com HTTP/1.1", core},
		{"OPTIONS * HTTP/1.1", core},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			raw := tt.line + "\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n"
			req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
			if err != nil {
				t.Fatalf("ReadRequest(%q): got error %v, want nil", tt.line, err)
			}
			if got := c.Classify(req.Method, req.URL.Path); got != tt.want {
				t.Errorf("Classify(%q, %q): got %v, want %v", req.Method, req.URL.Path, got, tt.want)
			}
		})
	}
}

func TestNewClassifierRejects(t *testing.T) {
	tests := []struct {
		name  string
		rules Rules
		want  []string // substrings the error must hold
	}{
		{"empty", Rules{Login: []string{""}}, []string{`login rule ""`, `start with "/"`}},
		{"relative", Rules{Export: []string{"reports/"}}, []string{`export rule "reports/"`, `start with "/"`}},
		{"double slash", Rules{Bypass: []string{"/static//"}}, []string{`bypass rule "/static//"`, `"/static/"`}},
		{"dot", Rules{Login: []string{"/accounts/./login/"}}, []string{`"/accounts/./login/"`, `"/accounts/login/"`}},
		{"dotdot", Rules{Login: []string{"/accounts/../login/"}}, []string{`"/accounts/../login/"`, `"/login/"`}},
		{"trailing dot", Rules{Login: []string{"/accounts/."}}, []string{`"/accounts/."`, `"/accounts"`}},
		{"query", Rules{Login: []string{"/accounts/login/?next=/"}}, []string{`"/accounts/login/?next=/"`, "query"}},
		{
			"every bad rule is named",
			Rules{Login: []string{"a", "/ok/"}, Export: []string{"b"}, Bypass: []string{"c"}},
			[]string{`login rule "a"`, `export rule "b"`, `bypass rule "c"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClassifier(tt.rules)
			if err == nil {
				t.Fatalf("NewClassifier(%+v): got %v, nil error, want an error", tt.rules, c)
			}
			if c != nil {
				t.Errorf("NewClassifier(%+v): got classifier %v with error, want nil", tt.rules, c)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("NewClassifier(%+v): got error %q, want it to contain %q", tt.rules, err, w)
				}
			}
		})
	}
}

func TestNewClassifierAccepts(t *testing.T) {
	tests := []struct {
		name   string
		rules  Rules
		method string
		path   string
		want   Class
	}{
		{"no rules", Rules{}, "POST", "/accounts/login/", core},
		{"root login rule", Rules{Login: []string{"/"}}, "POST", "/anything/at/all", login},
		{"root login rule, empty path", Rules{Login: []string{"/"}}, "POST", "", login},
		{"root bypass rule", Rules{Bypass: []string{"/"}}, "GET", "/x", bypass},
		{"root exact is a dir", Rules{Export: []string{"/"}}, "GET", "/", export},
		{"duplicates", Rules{Login: []string{"/a/", "/a/"}}, "POST", "/a/b", login},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClassifier(tt.rules)
			if err != nil {
				t.Fatalf("NewClassifier(%+v): got error %v, want nil", tt.rules, err)
			}
			if got := c.Classify(tt.method, tt.path); got != tt.want {
				t.Errorf("Classify(%q, %q): got %v, want %v", tt.method, tt.path, got, tt.want)
			}
		})
	}
}

// TestNewClassifierCopiesRules guards against configuration reloads that
// reuse the slices: a built Classifier must not change under a request.
func TestNewClassifierCopiesRules(t *testing.T) {
	r := Rules{Login: []string{"/accounts/login/"}}
	c, err := NewClassifier(r)
	if err != nil {
		t.Fatalf("NewClassifier: got error %v, want nil", err)
	}
	r.Login[0] = "/other/"
	if got := c.Classify("POST", "/accounts/login/"); got != login {
		t.Errorf("after changing the rules slice, Classify: got %v, want %v", got, login)
	}
}

func TestCleanPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "/"},
		{"/", "/"},
		{"//", "/"},
		{"/.", "/"},
		{"/..", "/"},
		{"/../..", "/"},
		{"a", "/a"},
		{"a/", "/a/"},
		{"/a", "/a"},
		{"/a/", "/a/"},
		{"/a//", "/a/"},
		{"//a//b//", "/a/b/"},
		{"/a/./b/", "/a/b/"},
		{"/a/../b/", "/b/"},
		{"/a/b/..", "/a"},
		{"/a/b/../", "/a/"},
		{"/a/b/.", "/a/b"},
		{"/a/b/./", "/a/b/"},
		{"/../a/", "/a/"},
		{"/a/...", "/a/..."},
		{"/a/.b/", "/a/.b/"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := cleanPath(tt.in); got != tt.want {
				t.Errorf("cleanPath(%q): got %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestClassifyAllocs pins the hot-path promise: a clean path, which is
// nearly every request, costs no allocation whatever the outcome.
func TestClassifyAllocs(t *testing.T) {
	c := newTestClassifier(t)
	tests := []struct{ method, path string }{
		{"POST", "/accounts/login/"},
		{"POST", "/accounts/login"},
		{"GET", "/accounts/login/"},
		{"GET", "/static/css/app.css"},
		{"GET", "/reports/q3.csv"},
		{"POST", "/api/v1/orders/42/items/"},
		{"GET", "/"},
		{"GET", ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			if got := testing.AllocsPerRun(100, func() { c.Classify(tt.method, tt.path) }); got != 0 {
				t.Errorf("Classify(%q, %q): got %v allocs, want 0", tt.method, tt.path, got)
			}
		})
	}
}

func BenchmarkClassify(b *testing.B) {
	c := newTestClassifier(b)
	benchmarks := []struct{ name, method, path string }{
		{"login", "POST", "/accounts/login/"},
		{"bypass", "GET", "/static/css/app.css"},
		{"export", "GET", "/reports/q3.csv"},
		{"core", "POST", "/api/v1/orders/42/items/"},
		{"unclean", "POST", "//static/../accounts/login/"}, // needs cleaning: allocates
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.Classify(bm.method, bm.path)
			}
		})
	}
}
