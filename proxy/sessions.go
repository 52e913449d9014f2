package proxy

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/lanegate/lanegate/session"
)

// stripLanegateHeaders removes every header a client sent under lanegate's
// prefix, compared without case and with "_" taken as "-": WSGI servers
// turn both into the same HTTP_X_LANEGATE_... variable, so a client's
// X_Lanegate_Identity would otherwise reach Django as the real thing.
func stripLanegateHeaders(h http.Header) {
	for k := range h {
		if hasLanegatePrefix(k) {
			delete(h, k)
		}
	}
}

// stripLanegateTrailers removes lanegate's headers announced or set as
// response trailers.
func stripLanegateTrailers(h http.Header) {
	for k := range h {
		if hasLanegatePrefix(strings.TrimPrefix(k, http.TrailerPrefix)) {
			delete(h, k)
		}
	}
	if tr, ok := h["Trailer"]; ok {
		kept := tr[:0]
		for _, v := range tr {
			if !hasLanegatePrefix(strings.TrimSpace(v)) {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			delete(h, "Trailer")
		} else {
			h["Trailer"] = kept
		}
	}
}

func hasLanegatePrefix(k string) bool {
	const p = session.HeaderPrefix
	if len(k) < len(p) {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := k[i]
		if c == '_' {
			c = '-'
		}
		if c|0x20 != p[i]|0x20 {
			return false
		}
	}
	return true
}

// needsLogin reports whether r is a GET or HEAD to a login-required path
// that carries no session cookie at all, so Django would only redirect it
// to the login page. A request with a cookie, even a stale one, goes to
// Django, which alone knows whether it is still good.
func (h *Handler) needsLogin(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if !h.loginRequired.Classify(r.Method, r.URL.Path).Bypass {
		return false
	}
	return !hasCookie(r.Header, h.sessionCookie)
}

// hasCookie reports whether a request's Cookie headers name the cookie.
func hasCookie(h http.Header, name string) bool {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			if k, _, ok := strings.Cut(strings.TrimSpace(part), "="); ok && k == name {
				return true
			}
		}
	}
	return false
}

// redirectToLogin answers as Django's redirect_to_login would: 302 to the
// login URL with the original path and query in next.
func (h *Handler) redirectToLogin(w http.ResponseWriter, r *http.Request) {
	sep := "?"
	if strings.Contains(h.loginURL, "?") {
		sep = "&"
	}
	loc := h.loginURL + sep + "next=" + url.QueryEscape(r.URL.RequestURI())
	hd := w.Header()
	hd.Set("Location", loc)
	// The answer depends on the cookie: a shared cache must not hand it
	// to a logged-in user.
	hd.Set("Cache-Control", "private, no-store")
	hd.Set("Vary", "Cookie")
	w.WriteHeader(http.StatusFound)
}
