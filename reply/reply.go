// Package reply is how lanegate answers a request it does not forward: a
// shed with Retry-After, a 502 or 504 of its own, as HTML for a person or
// JSON for a script. Every answer is small, self-contained and no-store,
// because under a storm it is served thousands of times a second and must
// never be cached as the page itself.
package reply

import (
	"fmt"
	"html"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// RetryAfterSeconds turns the controller's estimate into a Retry-After
// value: whole seconds, at least 1, stretched by a random 0-50 % so the
// clients shed together do not come back together.
func RetryAfterSeconds(d time.Duration, jitter float64) int {
	s := d.Seconds() * (1 + 0.5*jitter)
	return max(1, int(math.Ceil(s)))
}

// WantsJSON reports whether the client is a script rather than a person
// with a browser: it asks for JSON, says it is XHR, or sent JSON.
func WantsJSON(r *http.Request) bool {
	if r.Header.Get("X-Requested-With") == "XMLHttpRequest" {
		return true
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		return true
	}
	accept := r.Header.Get("Accept")
	if !strings.Contains(accept, "json") {
		return false
	}
	// A browser's navigation asks for text/html first; only treat JSON as
	// the preference when HTML is not listed before it.
	h := strings.Index(accept, "text/html")
	return h < 0 || strings.Index(accept, "json") < h
}

// ShedReason is the error code clients see for a decision.
func ShedReason(err error) string {
	return admission.DecisionOf(err).String()
}

// Shed answers a refused request: 429 when a rate limit refused it,
// 503 when the lane was full, always with Retry-After and no-store.
func Shed(w http.ResponseWriter, r *http.Request, lane admission.Lane, se *admission.ShedError) {
	status := http.StatusServiceUnavailable
	if admission.DecisionOf(se) == admission.RateLimited {
		status = http.StatusTooManyRequests
	}
	retry := RetryAfterSeconds(se.RetryAfter, rand.Float64())
	h := w.Header()
	h.Set("Retry-After", strconv.Itoa(retry))
	h.Set("Cache-Control", "no-store")
	reason := ShedReason(se)
	if WantsJSON(r) {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":%q,"reason":%q,"lane":%q,"retry_after":%d}`+"\n",
			statusError(status), reason, lane.String(), retry)
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, shedPage, retry, retry, html.EscapeString(reason))
}

func statusError(status int) string {
	if status == http.StatusTooManyRequests {
		return "rate_limited"
	}
	return "overloaded"
}

// shedPage is deliberately tiny and self-contained: under a storm it is
// served thousands of times and must not pull assets through the proxy.
const shedPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Busy - please retry</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}</style>
</head><body><h1>We are very busy right now</h1>
<p>Your request was not processed, so nothing was lost. Please try again in %d seconds.</p>
<p><small>Retry-After: %d s &middot; %s</small></p>
</body></html>
`

// Error answers with a short body saying what went wrong, as JSON or
// plain text to match the client.
func Error(w http.ResponseWriter, r *http.Request, status int, msg string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	if WantsJSON(r) {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":%q}`+"\n", msg)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}
