package proxy

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/metrics"
)

// Rules are path rules from configuration, one list per outcome. A rule
// ending in "/" matches that directory, everything below it and the same
// path without the trailing slash (Django's APPEND_SLASH redirects
// "/accounts/login" to "/accounts/login/", so both reach the same view). Any
// other rule matches that exact path only, such as "/favicon.ico".
//
// Rules are compared with the request path after it has been percent-decoded
// and cleaned, so they must be written decoded and clean themselves.
type Rules struct {
	// Login paths take the login lane for unsafe methods: these are the
	// views that hash passwords while holding a database connection.
	Login []string
	// Export paths take the export lane for every method: they are slow
	// whatever the method.
	Export []string
	// Bypass paths skip admission for GET and HEAD only: they are served
	// without touching the database (static files, media).
	Bypass []string
}

// Class is the result of classifying a request.
type Class struct {
	// Lane is the admission lane the request queues in. It is Core, and
	// meaningless, when Bypass is set.
	Lane admission.Lane
	// Bypass means the request goes straight upstream without a permit.
	Bypass bool
}

// String returns "bypass" or the lane's name, for logs and metric labels.
func (c Class) String() string {
	if c.Bypass {
		return "bypass"
	}
	return c.Lane.String()
}

// Classifier sorts requests into admission lanes by method and path. It is
// immutable once built and safe for concurrent use.
type Classifier struct {
	login, export, bypass []rule
}

// rule is one configured path, precomputed so that matching is a comparison
// and a prefix test with no allocation.
type rule struct {
	// path is the rule as configured. For a directory rule it ends in "/"
	// and is the prefix everything below the directory shares.
	path string
	// dir is whether path ends in "/".
	dir bool
}

// match reports whether the clean path p is covered by r.
func (r rule) match(p string) bool {
	if !r.dir {
		return p == r.path
	}
	// path[:len-1] is the directory without its slash; for the rule "/" it
	// is "", which no clean path equals, and every path has the prefix "/".
	return strings.HasPrefix(p, r.path) || p == r.path[:len(r.path)-1]
}

// NewClassifier checks and precomputes rules. Every rule must start with "/",
// be clean (no "//", "." or ".." segments, since a cleaned request path could
// never match it) and hold no "?" (rules match the path, never the query).
// The error names every bad rule. The Classifier keeps no reference to r's
// slices.
func NewClassifier(r Rules) (*Classifier, error) {
	var errs []error
	compile := func(kind string, paths []string) []rule {
		rules := make([]rule, 0, len(paths))
		for _, p := range paths {
			if err := checkRule(p); err != nil {
				errs = append(errs, fmt.Errorf("proxy: %s rule %q: %w", kind, p, err))
				continue
			}
			rules = append(rules, rule{path: p, dir: strings.HasSuffix(p, "/")})
		}
		return rules
	}
	c := &Classifier{
		login:  compile("login", r.Login),
		export: compile("export", r.Export),
		bypass: compile("bypass", r.Bypass),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// checkRule reports why p cannot be used as a rule.
func checkRule(p string) error {
	if !strings.HasPrefix(p, "/") {
		return errors.New(`must start with "/"`)
	}
	if strings.Contains(p, "?") {
		return errors.New(`must not contain "?": rules match the path, not the query`)
	}
	if cp := cleanPath(p); cp != p {
		return fmt.Errorf("is not clean: request paths are cleaned before matching, write %q", cp)
	}
	return nil
}

// Classify returns the class of a request. path is r.URL.Path, which net/http
// has already percent-decoded, so "%2e%2e" and "%2F" arrive as ".." and "/".
//
// The path is cleaned first, so that no spelling that reaches a login view
// upstream ("//accounts//login/", "/static/../accounts/login/") escapes the
// login lane or slips through as a bypassed static file. Then, first match
// wins:
//
//   - login, for unsafe methods: everything but GET, HEAD, OPTIONS and TRACE,
//     compared case-sensitively as HTTP does, so an unknown or lower-case
//     method counts as unsafe;
//   - export, for any method;
//   - bypass, for GET and HEAD only: a POST under /media/ may be an upload
//     view that uses the database;
//   - core otherwise.
//
// Classify does not allocate when path is already clean.
func (c *Classifier) Classify(method, path string) Class {
	p := cleanPath(path)
	if !safeMethod(method) && matchAny(c.login, p) {
		return Class{Lane: admission.Login}
	}
	if matchAny(c.export, p) {
		return Class{Lane: admission.Export}
	}
	if (method == "GET" || method == "HEAD") && matchAny(c.bypass, p) {
		return Class{Lane: admission.Core, Bypass: true}
	}
	return Class{Lane: admission.Core}
}

// safeMethod reports whether method is safe in the sense of RFC 9110 §9.2.1,
// that is whether a login view could not be doing its work for it.
func safeMethod(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

func matchAny(rules []rule, p string) bool {
	for _, r := range rules {
		if r.match(p) {
			return true
		}
	}
	return false
}

// cleanPath is path.Clean that keeps a trailing slash, because rules tell
// "/static/" from "/static". It makes p rooted, treats "" as "/", collapses
// repeated slashes and resolves "." and ".." without going above the root.
// It allocates only when p is not already clean: path.Clean then returns p
// itself, or p minus its trailing slash, which is put back by reslicing p.
// This is the same function net/http's ServeMux uses.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		if len(p) == len(np)+1 && strings.HasPrefix(p, np) {
			np = p
		} else {
			np += "/"
		}
	}
	return np
}

// label is the class's lane label in metrics.
func (c Class) label() metrics.Label { return metrics.LabelOf(c.Lane, c.Bypass) }
