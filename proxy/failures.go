package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/reply"
	"github.com/lanegate/lanegate/upstream"
)

// upstreamError answers a request the upstream failed.
func (h *Handler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	// A held request keeps its slot until the app is done with it, also
	// when its client is gone: the app does not know.
	var hold *upstream.Hold
	if rec, ok := w.(*recorder); ok && errors.As(err, &hold) {
		rec.hold = hold
	}
	if r.Context().Err() != nil {
		if rec, ok := w.(*recorder); ok {
			rec.status = statusClientClosed
		}
		return
	}
	status, msg, kind := classifyUpstreamError(err)
	if kind == kindClientBody || kind == kindClientBodyTimeout {
		// The client's fault, not the upstream's: no upstream error metric
		// or warning a client could inflate at will.
		h.metrics.ClientBodyError()
		h.log.Debug("client body error", zap.String("kind", kind), zap.String("path", h.logPath(r.URL.Path)), zap.Error(err))
		w.Header().Set("Connection", "close")
		reply.Error(w, r, status, msg)
		return
	}
	if rec, ok := w.(*recorder); ok && (kind == "refused" || kind == "failed") {
		rec.upstreamFailed = true
	}
	h.metrics.UpstreamError(kind)
	h.log.Warn("upstream error", zap.String("kind", kind), zap.String("path", h.logPath(r.URL.Path)), zap.Error(err))
	reply.Error(w, r, status, msg)
}

// upstreamBodyError counts a response body the upstream failed mid-way.
// The client has had the headers and a part of the body by then, so all it
// gets is a closed connection; ReverseProxy logs the error.
func (h *Handler) upstreamBodyError(err error) {
	kind := "body_failed"
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		kind = "body_timeout"
	}
	h.metrics.UpstreamError(kind)
}

func classifyUpstreamError(err error) (status int, msg, kind string) {
	var (
		mbe *http.MaxBytesError
		oe  *net.OpError
		ne  net.Error
	)
	var cbe *clientBodyError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, "request body too large", "body_too_large"
	case errors.As(err, &cbe) && cbe.timeout():
		return http.StatusRequestTimeout, "request body timed out", kindClientBodyTimeout
	case errors.As(err, &cbe):
		return http.StatusBadRequest, "bad request body", kindClientBody
	case errors.As(err, &oe) && oe.Op == "dial":
		// Refused, unreachable or slow to accept: the upstream is not
		// there, which is a bad gateway, not a slow one.
		return http.StatusBadGateway, "upstream refused the connection", "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return http.StatusGatewayTimeout, "upstream timed out", "timeout"
	default:
		return http.StatusBadGateway, "upstream failed", "failed"
	}
}
