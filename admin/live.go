package admin

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
)

// livePage is the live page served at the admin listener's root: one
// self-contained document whose script polls /status and shows it. It
// loads nothing else, so it works where the admin port has no way out.
//
//go:embed live.html
var livePage []byte

// livePolicy is the page's Content-Security-Policy. The page's inline
// style and script are allowed by their hashes; it may fetch from its own
// origin (/status) and nothing else, may not be framed, and may not turn
// text into HTML (Trusted Types with no policy: every figure is text).
var livePolicy = pagePolicy(livePage)

// pagePolicy is the Content-Security-Policy for page, allowing exactly its
// inline <script> and <style> elements.
func pagePolicy(page []byte) string {
	return strings.Join([]string{
		"default-src 'none'",
		"script-src " + inlineHashes(page, "script"),
		"style-src " + inlineHashes(page, "style"),
		"connect-src 'self'",
		"img-src data:", // the empty favicon, so that the browser asks for none
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
		"require-trusted-types-for 'script'",
		"trusted-types 'none'",
	}, "; ")
}

// inlineHashes lists the CSP hash sources of the contents of every
// <tag>…</tag> in page, or 'none'. An element with attributes is not
// matched, and so stays blocked: the page's tests check that none exists.
func inlineHashes(page []byte, tag string) string {
	open, end := []byte("<"+tag+">"), []byte("</"+tag+">")
	var srcs []string
	for rest := page; ; {
		i := bytes.Index(rest, open)
		if i < 0 {
			break
		}
		rest = rest[i+len(open):]
		j := bytes.Index(rest, end)
		if j < 0 {
			panic("admin: live page: <" + tag + "> without its end tag")
		}
		sum := sha256.Sum256(rest[:j])
		srcs = append(srcs, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
		rest = rest[j+len(end):]
	}
	if len(srcs) == 0 {
		return "'none'"
	}
	return strings.Join(srcs, " ")
}

// live serves the live page. It holds no figures: the script reads them
// from /status with the same credentials the browser gave for the page.
func (a *Server) live(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Content-Length", strconv.Itoa(len(livePage)))
	hd.Set("Content-Security-Policy", livePolicy)
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	if r.Method == http.MethodHead {
		return
	}
	w.Write(livePage)
}
