package proxy

import (
	"strings"
	"testing"

	"github.com/lanegate/lanegate/admission"
)

// refClean is an independent model of cleanPath, written segment by segment
// rather than with path.Clean, so that the fuzzer compares two
// implementations instead of one with itself.
func refClean(p string) string {
	var stack []string
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		default:
			stack = append(stack, seg)
		}
	}
	out := "/" + strings.Join(stack, "/")
	if len(stack) > 0 && strings.HasSuffix(p, "/") {
		out += "/"
	}
	return out
}

// refMatch reports whether the clean path p is covered by rule, written from
// the specification: a directory rule covers everything that starts with it
// and the directory without its slash; any other rule covers itself only.
func refMatch(rule, p string) bool {
	if strings.HasSuffix(rule, "/") {
		return strings.HasPrefix(p+"/", rule)
	}
	return p == rule
}

func refMatchAny(rules []string, p string) bool {
	for _, r := range rules {
		if refMatch(r, p) {
			return true
		}
	}
	return false
}

// refClassify is the specification of Classify as a straight-line program.
func refClassify(r Rules, method, p string) Class {
	p = refClean(p)
	unsafe := method != "GET" && method != "HEAD" && method != "OPTIONS" && method != "TRACE"
	switch {
	case unsafe && refMatchAny(r.Login, p):
		return Class{Lane: admission.Login}
	case refMatchAny(r.Export, p):
		return Class{Lane: admission.Export}
	case (method == "GET" || method == "HEAD") && refMatchAny(r.Bypass, p):
		return Class{Lane: admission.Core, Bypass: true}
	}
	return Class{Lane: admission.Core}
}

func FuzzClassify(f *testing.F) {
	for _, s := range []struct{ method, path string }{
		{"POST", "/accounts/login/"},
		{"POST", "/accounts/login"},
		{"POST", "//accounts//login/"},
		{"POST", "/accounts/./login/"},
		{"POST", "/static/../accounts/login/"},
		{"POST", "/../accounts/login/."},
		{"POST", "accounts/login/"},
		{"POST", "/api/token/."},
		{"post", "/accounts/login/"},
		{"GET", "/accounts/login/"},
		{"GET", "/static/app.css"},
		{"GET", "/static/../dashboard/"},
		{"HEAD", "/media/exports/../x"},
		{"GET", "/favicon.ico"},
		{"GET", "/favicon.icox"},
		{"GET", "/staticfoo"},
		{"OPTIONS", "*"},
		{"GET", ""},
		{"", "/"},
	} {
		f.Add(s.method, s.path)
	}
	c, err := NewClassifier(testRules)
	if err != nil {
		f.Fatalf("NewClassifier: got error %v, want nil", err)
	}
	f.Fuzz(func(t *testing.T, method, p string) {
		got := c.Classify(method, p)

		cp := refClean(p)
		if ccp := cleanPath(p); ccp != cp {
			t.Fatalf("cleanPath(%q): got %q, want %q", p, ccp, cp)
		}
		if again := cleanPath(cp); again != cp {
			t.Fatalf("cleanPath(%q), already clean: got %q, want it unchanged", cp, again)
		}
		if gotClean := c.Classify(method, cp); gotClean != got {
			t.Fatalf("Classify(%q, %q): got %v, but its clean form %q gives %v", method, p, got, cp, gotClean)
		}

		// The property the lane exists for: no spelling of a login path
		// escapes the login lane.
		if refMatchAny(testRules.Login, cp) {
			if gotPost := c.Classify("POST", p); gotPost != (Class{Lane: admission.Login}) {
				t.Fatalf("Classify(%q, %q), clean form %q under a login rule: got %v, want login", "POST", p, cp, gotPost)
			}
		}
		if got.Bypass && (method != "GET" && method != "HEAD" || got.Lane != admission.Core) {
			t.Fatalf("Classify(%q, %q): got bypass with lane %v, want bypass only for GET and HEAD, in lane core", method, p, got.Lane)
		}

		if want := refClassify(testRules, method, p); got != want {
			t.Fatalf("Classify(%q, %q): got %v, want %v", method, p, got, want)
		}
	})
}
