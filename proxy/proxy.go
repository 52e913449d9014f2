// Package proxy is lanegate's HTTP side: it classifies each request into a
// lane, asks the admission controller for a slot, forwards admitted requests
// to the upstream app with httputil.ReverseProxy, and answers refused ones
// at once with 503 or 429 and Retry-After. It also serves the admin
// endpoints.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/reply"
	"github.com/lanegate/lanegate/session"
	"github.com/lanegate/lanegate/upstream"
	"github.com/lanegate/lanegate/waitroom"
)

// Admitter is what the handler needs of the admission controller.
type Admitter interface {
	Acquire(ctx context.Context, r admission.Request) (*admission.Permit, error)
	Shadow(r admission.Request) (admission.Decision, *admission.Permit)
	Pass(r admission.Request) *admission.Permit
}

// Sessions is what the handler needs of the session cache.
type Sessions interface {
	// Begin looks up the request's session cookie.
	Begin(ctx context.Context, h http.Header) *session.Request
	// Response learns from the response headers and strips lanegate's.
	Response(ctx context.Context, r *session.Request, h http.Header, status int)
	// End releases the request's part in coalescing.
	End(r *session.Request)
}

// Options configure a Handler. Zero durations and sizes mean "no limit"
// except where noted.
type Options struct {
	// Upstream is the app server's base URL (scheme and host).
	Upstream *url.URL
	// TrustedProxies are the peers whose X-Forwarded-* headers are
	// believed. From anyone else those headers are overwritten.
	TrustedProxies []netip.Prefix
	// Rules sort requests into lanes.
	Rules Rules
	// MaxBodyBytes refuses larger request bodies with 413.
	MaxBodyBytes int64
	// BodyReadTimeout bounds each pause in a request body; past it the
	// request is answered 408. Zero means no bound.
	BodyReadTimeout time.Duration
	// BufferBodyBytes is the largest request body, by Content-Length,
	// read whole before admission; 0 streams every body.
	BufferBodyBytes int64
	// DialTimeout bounds connecting to the upstream; a refused or
	// unreachable upstream answers 502.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// headers once the request is sent; past it the client gets 504.
	ResponseHeaderTimeout time.Duration
	// StallTimeout bounds the upstream's silence once the exchange is
	// under way: a pause between response body bytes, or in reading the
	// request body. Zero means no bound.
	StallTimeout time.Duration
	// HoldAfterTimeout keeps the slot of a request whose response headers
	// timed out taken until the app is done with it, up to this long; zero
	// frees it with the 504. Plain-HTTP upstreams only.
	HoldAfterTimeout time.Duration
	// IdleConns is how many idle keep-alive connections to the upstream
	// are kept: the budget, so every admitted request finds one warm.
	IdleConns int
	// UpstreamIdleTimeout closes idle upstream connections. Keep it below
	// the app server's own keep-alive timeout (gunicorn: 2 s), or a POST
	// may be sent on a connection the server is closing and fail.
	UpstreamIdleTimeout time.Duration
	// AccessLog writes one line per request.
	AccessLog bool
	// RedactPaths are path prefixes after which the rest of a logged path
	// is replaced: links whose path carries a secret.
	RedactPaths []string
	// Mode is the initial admission mode; SetMode changes it.
	Mode admission.Mode
	// Sessions, when set, is the session cache: requests of a session
	// Django granted are forwarded with a signed identity and admitted as
	// authenticated; the others as anonymous.
	Sessions Sessions
	// SessionCookie is Django's session cookie name, for LoginRequired.
	SessionCookie string
	// LoginRequired are path rules (as in Rules) whose GETs and HEADs
	// without a session cookie are redirected to LoginURL at the edge.
	LoginRequired []string
	// LoginURL is Django's LOGIN_URL.
	LoginURL string
	// WaitingRoom keeps logins' places across retries with signed
	// tickets and shows people a waiting page; it needs Tickets, and an
	// Admitter that is also a Room.
	WaitingRoom bool
	// Tickets signs and verifies waiting-room tickets.
	Tickets *session.Keyring
}

// Handler is lanegate's data-plane http.Handler.
type Handler struct {
	ctrl       Admitter
	classifier atomic.Pointer[Classifier]
	rp         *httputil.ReverseProxy
	transport  upstream.Transport
	trusted    []netip.Prefix
	upstream   *url.URL
	maxBody    int64
	bodyRead   time.Duration
	bufferBody int64
	accessLog  bool
	redact     []string
	log        *zap.Logger
	metrics    *Metrics
	mode       atomic.Pointer[admission.Mode]
	recorders  sync.Pool

	sessions      Sessions
	sessionCookie string
	loginRequired *Classifier // nil when no path needs a login
	loginURL      string

	// room is the waiting room's HTTP side; nil when it is off.
	room *waitroom.Room
}

// New returns a handler forwarding to opts.Upstream under ctrl.
func New(ctrl Admitter, opts Options, log *zap.Logger, metrics *Metrics) (*Handler, error) {
	if opts.Upstream == nil || opts.Upstream.Host == "" {
		return nil, errors.New("proxy: upstream URL with a host is required")
	}
	cl, err := NewClassifier(opts.Rules)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	h := &Handler{
		ctrl:       ctrl,
		trusted:    opts.TrustedProxies,
		upstream:   opts.Upstream,
		maxBody:    opts.MaxBodyBytes,
		bodyRead:   opts.BodyReadTimeout,
		bufferBody: opts.BufferBodyBytes,
		accessLog:  opts.AccessLog,
		redact:     opts.RedactPaths,
		log:        log,
		metrics:    metrics,

		sessions:      opts.Sessions,
		sessionCookie: opts.SessionCookie,
		loginURL:      opts.LoginURL,
	}
	if h.sessionCookie == "" {
		h.sessionCookie = "sessionid"
	}
	if len(opts.LoginRequired) > 0 {
		// The login-required rules reuse the classifier's matching: they
		// are the "bypass" rules of a classifier of their own.
		lr, err := NewClassifier(Rules{Bypass: opts.LoginRequired})
		if err != nil {
			return nil, fmt.Errorf("proxy: login-required paths: %w", err)
		}
		h.loginRequired = lr
	}
	if opts.WaitingRoom {
		line, ok := ctrl.(waitroom.Line)
		if !ok || opts.Tickets == nil {
			return nil, errors.New("proxy: the waiting room needs a ticket keyring and a controller with a login line")
		}
		h.room = waitroom.New(line, opts.Tickets, h.clientHTTPS)
		metrics.SetRoom(h.room)
	}
	mode := opts.Mode
	if mode == "" {
		mode = admission.Enforce
	}
	h.mode.Store(&mode)
	h.classifier.Store(cl)
	h.recorders.New = func() any { return new(recorder) }
	h.transport = upstream.New(upstream.Options{
		URL:                   opts.Upstream,
		DialTimeout:           opts.DialTimeout,
		ResponseHeaderTimeout: opts.ResponseHeaderTimeout,
		StallTimeout:          opts.StallTimeout,
		HoldAfterTimeout:      opts.HoldAfterTimeout,
		Concurrency:           opts.IdleConns,
		IdleTimeout:           opts.UpstreamIdleTimeout,
		OnBodyError:           h.upstreamBodyError,
	})
	h.rp = &httputil.ReverseProxy{
		Rewrite:      h.rewrite,
		Transport:    h.transport,
		BufferPool:   newBufferPool(),
		ErrorHandler: h.upstreamError,
		ErrorLog:     zap.NewStdLog(log.Named("reverseproxy")),
	}
	return h, nil
}

// Close releases idle upstream connections, and the slots held for
// requests the app has not finished after their 504.
func (h *Handler) Close() { h.transport.Close() }

// Mode returns the admission mode in force.
func (h *Handler) Mode() admission.Mode { return *h.mode.Load() }

// SetMode switches the admission mode for requests that arrive from now
// on. Requests already queued or in flight finish under the mode they
// started with.
func (h *Handler) SetMode(m admission.Mode) { h.mode.Store(&m) }

// SetRules replaces the path rules for requests that arrive from now on.
func (h *Handler) SetRules(r Rules) error {
	cl, err := NewClassifier(r)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	h.classifier.Store(cl)
	return nil
}

// ServeHTTP classifies, admits and forwards one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := h.recorders.Get().(*recorder)
	rec.reset(w)
	defer func() {
		rec.reset(nil) // do not keep the connection alive from the pool
		h.recorders.Put(rec)
	}()
	// Only lanegate speaks for lanegate: a client's own identity, grant
	// request or anything else under the prefix is dropped before anyone
	// reads it, whether or not the session cache is on.
	stripLanegateHeaders(r.Header)
	if len(r.TransferEncoding) > 0 || (!r.ProtoAtLeast(1, 1) && r.ContentLength != 0) {
		// A chunked request may have come with a Content-Length, which Go's
		// server drops silently, and HTTP/1.0 ignores Transfer-Encoding: a
		// proxy in front that framed the body the other way would then
		// smuggle whatever follows it as a request of its own. RFC 9112
		// 6.1 says close the connection after such a request, so nothing
		// after its body is ever read.
		rec.Header().Set("Connection", "close")
	}

	class := h.classifier.Load().Classify(r.Method, r.URL.Path)
	ev := event{start: start, class: class, decision: decisionBypass}

	if h.maxBody > 0 && r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength > h.maxBody {
			ev.decision = decisionTooLarge
			h.metrics.bodyTooLarge(class)
			reply.Error(rec, r, http.StatusRequestEntityTooLarge, "request body too large")
			h.finish(rec, r, &ev, time.Now())
			return
		}
		r.Body = http.MaxBytesReader(rec, r.Body, h.maxBody)
	}
	if h.bodyRead > 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = &clientBody{ReadCloser: r.Body, rc: http.NewResponseController(rec), timeout: h.bodyRead}
	}

	if class.Bypass {
		h.metrics.bypass()
		h.forward(rec, r, &ev, nil, start)
		return
	}

	if h.loginRequired != nil && h.needsLogin(r) {
		ev.decision = decisionLoginRedirect
		h.metrics.loginRedirect()
		h.redirectToLogin(rec, r)
		h.finish(rec, r, &ev, time.Now())
		return
	}

	enforce := *h.mode.Load() == admission.Enforce
	if enforce && h.room != nil && (r.Method == http.MethodGet || r.Method == http.MethodHead) && waitroom.IsNavigation(r) &&
		h.classifier.Load().Classify(http.MethodPost, r.URL.Path).Lane == admission.Login &&
		h.room.GatePage(rec, r) {
		ev.decision = decisionWaitingPage
		h.finish(rec, r, &ev, time.Now())
		return
	}

	// Before the session lookup, whose identity is good for seconds only,
	// and before admission, so that a slow upload waits without a slot.
	if h.bufferBody > 0 && r.ContentLength > 0 && r.ContentLength <= h.bufferBody {
		if err := bufferBody(r); err != nil {
			h.bodyError(rec, r, &ev, err)
			return
		}
	}

	req := admission.Request{Lane: class.Lane}
	if h.sessions != nil {
		sess := h.sessions.Begin(r.Context(), r.Header)
		defer h.sessions.End(sess)
		rec.sessions, rec.sess, rec.req = h.sessions, sess, r
		req.Anonymous = !sess.Authenticated()
		ev.authenticated = sess.Authenticated()
		if sess.Identity != "" {
			r.Header[session.HeaderIdentity] = []string{sess.Identity}
		}
		if sess.GrantRequest != "" {
			r.Header[session.HeaderGrantRequest] = []string{sess.GrantRequest}
		}
	}
	// Only the login lane's per-client bucket needs the client's address.
	if class.Lane == admission.Login {
		if a, ok := h.clientAddr(r); ok {
			req.Client = clientKey(a)
		} else {
			req.Client = r.RemoteAddr
		}
		if enforce && h.room != nil {
			if t, ok := h.room.Ticket(r, time.Now()); ok {
				req.Ticket, req.Arrival = t.ID, t.Arrival
			}
			req.Patient = waitroom.IsNavigation(r)
		}
	}
	var permit *admission.Permit
	switch *h.mode.Load() {
	case admission.Off:
		permit = h.ctrl.Pass(req)
		ev.decision = admission.Passed.String()
	case admission.Shadow:
		var d admission.Decision
		d, permit = h.ctrl.Shadow(req)
		ev.decision = d.String()
	default:
		var err error
		permit, err = h.ctrl.Acquire(r.Context(), req)
		if err != nil {
			h.refuse(rec, r, &ev, class.Lane, err)
			return
		}
		ev.decision = admission.Admitted.String()
		ev.queueWait = permit.Waited()
		if req.Ticket != 0 {
			waitroom.DropTicket(rec) // used up
		}
		h.metrics.observeQueueWait(class, ev.queueWait)
	}
	if r.Context().Err() != nil {
		// The client left while we decided; forwarding now would make the
		// app do work nobody reads.
		permit.Abandon()
		ev.decision = decisionClientGone
		ev.status = statusClientClosed
		h.finish(rec, r, &ev, time.Now())
		return
	}
	h.forward(rec, r, &ev, permit, time.Now())
}

// forward relays r to the upstream, then releases permit (nil for a
// bypassed request). The slot is held until the response body is fully
// relayed: the app keeps its database connection until it has written the
// last byte.
//
// When the body cannot be relayed to its end, because the client or the
// upstream went away mid-body, ReverseProxy aborts the handler by panicking
// with http.ErrAbortHandler. The release is deferred so that it runs then
// too: a slot skipped there would be lost for good.
func (h *Handler) forward(rec *recorder, r *http.Request, ev *event, permit *admission.Permit, start time.Time) {
	defer func() {
		// Trailers are written after the handler returns, from the header
		// map: lanegate's headers must not leave as trailers either.
		stripLanegateTrailers(rec.Header())
		end := time.Now()
		if hold := rec.hold; hold != nil && permit != nil {
			// The app still works on the request it timed out on, and
			// holds its database connection: so does the slot.
			hold.OnDone(permit.Release)
		} else {
			permit.ReleaseAt(end)
		}
		ev.upstream = end.Sub(start)
		h.metrics.observeUpstream(ev.class, ev.upstream)
		h.finish(rec, r, ev, end)
	}()
	defer func() {
		// Runs first. When the upstream dies mid-body, ReverseProxy aborts
		// the handler, and net/http closes the connection without sending
		// what the response has buffered: the client would get a bare EOF,
		// not even the headers, and its HTTP library might send the
		// request again. Flushing first hands it the headers and the bytes
		// so far, so it sees a response cut short.
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler && rec.status != 0 {
				http.NewResponseController(rec.ResponseWriter).Flush()
			}
			panic(v)
		}
	}()
	h.rp.ServeHTTP(rec, r)
}

// bodyError answers a request whose body could not be read before
// admission: the client's fault, and the connection is closed, since what
// follows on it cannot be trusted to be a request.
func (h *Handler) bodyError(rec *recorder, r *http.Request, ev *event, err error) {
	h.metrics.bodyError(ev.class)
	ev.decision = decisionBodyError
	status, msg, kind := classifyUpstreamError(err)
	switch kind {
	case kindClientBody, kindClientBodyTimeout:
		h.metrics.clientBodyError()
	case "body_too_large":
	default:
		status, msg = http.StatusBadRequest, "bad request body"
		h.metrics.clientBodyError()
	}
	h.log.Debug("client body error", zap.String("path", h.logPath(r.URL.Path)), zap.Error(err))
	rec.Header().Set("Connection", "close")
	reply.Error(rec, r, status, msg)
	h.finish(rec, r, ev, time.Now())
}

// refuse answers a request the controller did not admit.
func (h *Handler) refuse(rec *recorder, r *http.Request, ev *event, lane admission.Lane, err error) {
	var se *admission.ShedError
	if !errors.As(err, &se) {
		// The client went away while queued: there is nobody to answer.
		ev.decision = decisionClientGone
		ev.status = statusClientClosed
		h.finish(rec, r, ev, time.Now())
		return
	}
	ev.decision = admission.DecisionOf(err).String()
	if se.Place != nil && h.room != nil {
		h.room.Answer(rec, r, se)
		h.finish(rec, r, ev, time.Now())
		return
	}
	reply.Shed(rec, r, lane, se)
	h.finish(rec, r, ev, time.Now())
}

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
func (h *Handler) finish(rec *recorder, r *http.Request, ev *event, end time.Time) {
	if !h.accessLog {
		return
	}
	h.log.Info("request",
		zap.String("method", r.Method),
		zap.String("path", h.logPath(r.URL.Path)),
		zap.String("lane", laneLabel(ev.class)),
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

// clientAddr is the address a request came from: the peer, or, when the
// peer is a trusted proxy, the nearest untrusted address it forwarded for.
func (h *Handler) clientAddr(r *http.Request) (netip.Addr, bool) {
	peer, ok := peerAddr(r)
	if !ok || !h.isTrusted(peer) {
		return peer, ok
	}
	if c, _, ok := forwardedChain(r.Header.Values("X-Forwarded-For"), h.isTrusted); ok {
		return c, true
	}
	return peer, true
}

func (h *Handler) isTrusted(a netip.Addr) bool {
	for _, p := range h.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientHTTPS reports whether the client reached lanegate over HTTPS: its
// own connection, or a trusted proxy's word.
func (h *Handler) clientHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	peer, ok := peerAddr(r)
	return ok && h.isTrusted(peer) && r.Header.Get("X-Forwarded-Proto") == "https"
}

func peerAddr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// rewrite builds the outbound request. ReverseProxy has already removed
// hop-by-hop, X-Forwarded-* and Forwarded headers from it.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(h.upstream)
	// Django's CSRF and ALLOWED_HOSTS checks need the client's Host.
	pr.Out.Host = pr.In.Host
	out := pr.Out.Header
	peer, ok := peerAddr(pr.In)
	if ok && h.isTrusted(peer) {
		// Behind a trusted proxy the chain is kept from the client on and
		// the peer appended; entries left of the client are its own claims
		// and are dropped, so the first entry, which allauth keys its
		// limits on, is the client.
		if client, chain, ok := forwardedChain(pr.In.Header.Values("X-Forwarded-For"), h.isTrusted); ok {
			out["X-Forwarded-For"] = []string{strings.Join(chain, ", ") + ", " + peer.String()}
			out["X-Real-Ip"] = []string{client.String()}
		} else {
			out["X-Forwarded-For"] = []string{peer.String()}
			out["X-Real-Ip"] = []string{peer.String()}
		}
		if v := pr.In.Header.Get("X-Forwarded-Proto"); v != "" {
			out["X-Forwarded-Proto"] = []string{v}
		} else {
			out["X-Forwarded-Proto"] = []string{scheme(pr.In)}
		}
		if v := pr.In.Header.Get("X-Forwarded-Host"); v != "" {
			out["X-Forwarded-Host"] = []string{v}
		} else {
			out["X-Forwarded-Host"] = []string{pr.In.Host}
		}
		return
	}
	// From anyone else any claim about the client is overwritten or
	// dropped, or the client picks the address Django rate-limits by.
	addr := pr.In.RemoteAddr
	if ok {
		addr = peer.String()
	} else if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	out["X-Forwarded-For"] = []string{addr}
	out["X-Real-Ip"] = []string{addr}
	for _, name := range spoofableClientHeaders {
		delete(out, name)
	}
	// WSGI servers turn X_Forwarded_For and X-Forwarded-For into the same
	// HTTP_X_FORWARDED_FOR, so an underscore spelling from an untrusted
	// client could stand in for a header just overwritten. Like nginx by
	// default, headers with an underscore in their name are dropped.
	for name := range out {
		if strings.IndexByte(name, '_') >= 0 {
			delete(out, name)
		}
	}
	out["X-Forwarded-Host"] = []string{pr.In.Host}
	out["X-Forwarded-Proto"] = []string{scheme(pr.In)}
}

// spoofableClientHeaders name the client in some CDNs' and proxies'
// dialects; only a trusted proxy may send them on.
var spoofableClientHeaders = []string{"True-Client-Ip", "X-Client-Ip", "Cf-Connecting-Ip", "Fastly-Client-Ip", "X-Cluster-Client-Ip"}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
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

// upstreamError answers a request the upstream failed.
func (h *Handler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		if rec, ok := w.(*recorder); ok {
			rec.status = statusClientClosed
		}
		return
	}
	var hold *upstream.Hold
	if rec, ok := w.(*recorder); ok && errors.As(err, &hold) {
		rec.hold = hold
	}
	status, msg, kind := classifyUpstreamError(err)
	if kind == kindClientBody || kind == kindClientBodyTimeout {
		// The client's fault, not the upstream's: no upstream error metric
		// or warning a client could inflate at will.
		h.metrics.clientBodyError()
		h.log.Debug("client body error", zap.String("kind", kind), zap.String("path", h.logPath(r.URL.Path)), zap.Error(err))
		w.Header().Set("Connection", "close")
		reply.Error(w, r, status, msg)
		return
	}
	h.metrics.upstreamError(kind)
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
	h.metrics.upstreamError(kind)
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
