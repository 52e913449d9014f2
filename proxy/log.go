package proxy

import (
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
)

// statusCode is the status to log: what was written, 499 when the client
// left before anything was.
func statusCode(written, override int) int {
	switch {
	case override != 0:
		return override
	case written != 0:
		return written
	}
	return http.StatusOK
}

// statusClientClosed is nginx's code for "the client went away before we
// answered"; it is logged, never sent.
const statusClientClosed = 499

// event is what the access log says about one request.
type event struct {
	start     time.Time
	class     Class
	decision  string
	queueWait time.Duration
	upstream  time.Duration
	status    int // overrides the recorded status, for 499
	// authenticated is true when the request was forwarded with an identity.
	authenticated bool
}

// finish writes the access log line. Request bodies and query strings are
// never logged: allauth echoes passwords in JSON error bodies and reset
// links carry secrets.
func (h *Handler) finish(rec *recorder, r *http.Request, end time.Time) {
	ev := &rec.ev
	if !h.accessLog {
		return
	}
	h.log.Info("request",
		zap.String("method", r.Method),
		zap.String("path", h.logPath(r.URL.Path)),
		zap.String("lane", ev.class.label().String()),
		zap.String("decision", ev.decision),
		zap.Bool("authenticated", ev.authenticated),
		zap.Int("status", statusCode(rec.status, ev.status)),
		zap.Int64("bytes", rec.bytes),
		zap.Duration("queue_wait", ev.queueWait),
		zap.Duration("upstream", ev.upstream),
		zap.Duration("duration", end.Sub(ev.start)),
		zap.String("client", h.logClient(r)),
	)
}

// logPath is the path as logged: everything after a redacted prefix is
// replaced, because password-reset and email-confirmation links carry
// their secret in the path.
func (h *Handler) logPath(p string) string {
	for _, prefix := range h.redact {
		if strings.HasPrefix(p, prefix) && len(p) > len(prefix) {
			return prefix + "<redacted>"
		}
	}
	return p
}

// logClient is the client's address as logged: the resolved client behind
// a trusted proxy, not the proxy.
func (h *Handler) logClient(r *http.Request) string {
	if a, ok := h.clientAddr(r); ok {
		return a.String()
	}
	return r.RemoteAddr
}
