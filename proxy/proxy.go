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
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/metrics"
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

// FleetLine is the login line a fleet of lanegates shares (fleet.Line): a
// login is ranked there on its arrival, one round trip, and how it left is
// reported afterwards, off its path.
type FleetLine interface {
	// Arrive ranks a login, with the ticket it presents (id 0 for none).
	Arrive(ctx context.Context, id uint64, arrival time.Time) (admission.Rank, error)
	// Used, Away, Gone and Drop report how a ranked login left the line:
	// admitted; sent away with its place until until; gone before its
	// turn (its place kept a while); refused without a place.
	Used(admission.Rank)
	Away(r admission.Rank, until time.Time)
	Gone(admission.Rank)
	Drop(admission.Rank)
	// Kept reports a place kept for someone on the waiting page.
	Kept(admission.Place)
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
	// BufferBodyTotalBytes bounds the memory of all the bodies being read
	// before admission at once, so that slow or silent clients cannot
	// exhaust it however many connect; a body finding no room streams, as
	// a larger one does. 0 means no bound.
	BufferBodyTotalBytes int64
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
	// ResponseBufferBytes is the largest response body read whole from the
	// app before it is relayed, so that the request's slot is freed when
	// the app is done rather than when a slow client has read the last
	// byte; 0 relays every response as it comes.
	ResponseBufferBytes int64
	// ResponseBufferTotalBytes bounds the memory of all buffered responses
	// together; past it, responses are relayed unbuffered.
	ResponseBufferTotalBytes int64
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
	// FleetLine, when set, is the login line the fleet shares: logins are
	// ranked in it (in enforce mode), and waiting-page places are
	// reported to it. A login it cannot rank in time ranks in this
	// replica's line.
	FleetLine FleetLine
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
	bodies     bodyBuffers
	accessLog  bool
	redact     []string
	log        *zap.Logger
	metrics    *metrics.Registry
	mode       atomic.Pointer[admission.Mode]
	buffers    *upstream.Buffers // nil: no response is buffered
	recorders  sync.Pool

	sessions      Sessions
	sessionCookie string
	loginRequired *Classifier // nil when no path needs a login
	loginURL      string

	// room is the waiting room's HTTP side; nil when it is off.
	room *waitroom.Room
	// fleetLine is the fleet's shared login line; nil outside a fleet.
	fleetLine FleetLine
}

// New returns a handler forwarding to opts.Upstream under ctrl.
func New(ctrl Admitter, opts Options, log *zap.Logger, metrics *metrics.Registry) (*Handler, error) {
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
		bodies:     bodyBuffers{limit: opts.BufferBodyTotalBytes},
		accessLog:  opts.AccessLog,
		redact:     opts.RedactPaths,
		log:        log,
		metrics:    metrics,
		fleetLine:  opts.FleetLine,

		sessions:      opts.Sessions,
		sessionCookie: opts.SessionCookie,
		loginURL:      opts.LoginURL,
	}
	metrics.SetBufferedBodies(h.bodies.inUse)
	if h.sessionCookie == "" {
		h.sessionCookie = "sessionid"
	}
	if err := h.gates(ctrl, opts); err != nil {
		return nil, err
	}
	mode := opts.Mode
	if mode == "" {
		mode = admission.Enforce
	}
	h.mode.Store(&mode)
	h.classifier.Store(cl)
	h.recorders.New = func() any { return new(recorder) }
	h.forwarder(opts)
	return h, nil
}

// gates sets up the edge's own answers: the login-required redirect and
// the waiting room.
func (h *Handler) gates(ctrl Admitter, opts Options) error {
	if len(opts.LoginRequired) > 0 {
		// The login-required rules reuse the classifier's matching: they
		// are the "bypass" rules of a classifier of their own.
		lr, err := NewClassifier(Rules{Bypass: opts.LoginRequired})
		if err != nil {
			return fmt.Errorf("proxy: login-required paths: %w", err)
		}
		h.loginRequired = lr
	}
	if opts.WaitingRoom {
		line, ok := ctrl.(waitroom.Line)
		if !ok || opts.Tickets == nil {
			return errors.New("proxy: the waiting room needs a ticket keyring and a controller with a login line")
		}
		if opts.FleetLine != nil {
			line = fleetRoomLine{line, opts.FleetLine}
		}
		h.room = waitroom.New(line, opts.Tickets, h.clientHTTPS)
		h.metrics.SetRoom(h.room)
	}
	return nil
}

// forwarder sets up what forwards to the upstream: the response buffers,
// the transport, and the ReverseProxy over them.
func (h *Handler) forwarder(opts Options) {
	if opts.ResponseBufferBytes > 0 {
		h.buffers = upstream.NewBuffers(opts.ResponseBufferBytes, opts.ResponseBufferTotalBytes)
		h.metrics.SetBuffers(h.buffers)
	}
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
		Rewrite:        h.rewrite,
		Transport:      h.transport,
		BufferPool:     newBufferPool(),
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.upstreamError,
		ErrorLog:       zap.NewStdLog(h.log.Named("reverseproxy")),
	}
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

// RoomStatus is the waiting room's part of /status, nil when it is off.
func (h *Handler) RoomStatus(rs admission.RoomStats) *waitroom.Status { return h.room.Status(rs) }

// Bypassed is how many requests skipped admission.
func (h *Handler) Bypassed() uint64 { return h.metrics.Bypassed() }

// SetRules replaces the path rules for requests that arrive from now on.
func (h *Handler) SetRules(r Rules) error {
	cl, err := NewClassifier(r)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	h.classifier.Store(cl)
	return nil
}

// ServeHTTP runs one request through the pipeline the README draws:
// classify, gate, buffer, identify, admit, forward, finish. Each step that
// answers the request itself (a 413, a redirect to the login page, the
// waiting page, a shed) ends it there.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := h.recorders.Get().(*recorder)
	rec.reset(w)
	defer h.done(rec)
	start := time.Now()
	// One mode for the whole request, whatever PUT /admission does
	// meanwhile.
	mode := *h.mode.Load()
	h.classify(rec, r, start)
	if h.refuseBody(rec, r) {
		return
	}
	if rec.ev.class.Bypass {
		h.metrics.Bypass()
		h.forward(rec, r, nil, start)
		return
	}
	if h.gate(rec, r, mode) || !h.buffer(rec, r) {
		return
	}
	req := h.identify(rec, r, mode)
	permit, ok := h.admit(rec, r, req, mode)
	if !ok {
		return
	}
	h.forward(rec, r, permit, time.Now())
}

// done ends the request's part in session coalescing and returns its
// recorder to the pool.
func (h *Handler) done(rec *recorder) {
	if rec.sessions != nil {
		rec.sessions.End(rec.sess)
	}
	if rec.body != nil {
		rec.body.end()
	}
	if rec.buffered != nil {
		// The body may never have been read to its end or closed: shed,
		// refused, or its client gone while queued.
		rec.buffered.free()
	}
	rec.reset(nil) // do not keep the connection alive from the pool
	h.recorders.Put(rec)
}

// classify sorts the request into a lane, after taking from it whatever
// only lanegate may say.
func (h *Handler) classify(rec *recorder, r *http.Request, start time.Time) {
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
	rec.ev = event{start: start, class: class, decision: metrics.DecisionBypass}
}

// refuseBody answers 413 for a body announced larger than the limit, and
// otherwise bounds the body's size and pauses as it is read. It reports
// whether it answered.
func (h *Handler) refuseBody(rec *recorder, r *http.Request) bool {
	if r.Body == nil || r.Body == http.NoBody {
		return false
	}
	if h.maxBody > 0 {
		if r.ContentLength > h.maxBody {
			rec.ev.decision = metrics.DecisionTooLarge
			h.metrics.BodyTooLarge(rec.ev.class.label())
			reply.Error(rec, r, http.StatusRequestEntityTooLarge, "request body too large")
			h.finish(rec, r, time.Now())
			return true
		}
		r.Body = http.MaxBytesReader(rec, r.Body, h.maxBody)
	}
	if h.bodyRead > 0 {
		rec.body = &clientBody{ReadCloser: r.Body, rc: http.NewResponseController(rec), timeout: h.bodyRead}
		r.Body = rec.body
	}
	return false
}

// gate answers at the edge what need not reach the app or the line: a
// login-required page without a session cookie, and during a login storm
// a person opening the login page, who waits on the waiting page first.
// It reports whether it answered.
func (h *Handler) gate(rec *recorder, r *http.Request, mode admission.Mode) bool {
	if h.loginRequired != nil && h.needsLogin(r) {
		rec.ev.decision = metrics.DecisionLoginRedirect
		h.metrics.LoginRedirect()
		h.redirectToLogin(rec, r)
		h.finish(rec, r, time.Now())
		return true
	}
	if mode == admission.Enforce && h.room != nil && h.isLoginPage(r) && h.room.GatePage(rec, r, h.loginClient(r)) {
		rec.ev.decision = metrics.DecisionWaitingPage
		h.finish(rec, r, time.Now())
		return true
	}
	return false
}

// isLoginPage reports whether r is a person's browser opening a page whose
// form posts to the login lane.
func (h *Handler) isLoginPage(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && waitroom.IsNavigation(r) &&
		h.classifier.Load().Classify(http.MethodPost, r.URL.Path).Lane == admission.Login
}

// buffer reads a small body whole before admission, so that a slow upload
// waits without a slot and a client that leaves while queued is noticed;
// when the bodies being read already hold the memory they may, it streams.
// It comes before the session lookup, whose identity is good for seconds
// only. It reports whether the request goes on.
func (h *Handler) buffer(rec *recorder, r *http.Request) bool {
	if h.bufferBody <= 0 || r.ContentLength <= 0 || r.ContentLength > h.bufferBody {
		return true
	}
	body, err := h.bodies.read(r)
	if err != nil {
		h.bodyError(rec, r, err)
		return false
	}
	rec.buffered = body
	return true
}

// identify says who is asking: the session cache's identity for Django,
// whether the request is logged in, and for a login its client address and
// its waiting-room ticket.
func (h *Handler) identify(rec *recorder, r *http.Request, mode admission.Mode) admission.Request {
	req := admission.Request{Lane: rec.ev.class.Lane}
	if h.sessions != nil {
		sess := h.sessions.Begin(r.Context(), r.Header)
		rec.sessions, rec.sess, rec.req = h.sessions, sess, r
		req.Anonymous = !sess.Authenticated()
		rec.ev.authenticated = sess.Authenticated()
		if sess.Identity != "" {
			r.Header[session.HeaderIdentity] = []string{sess.Identity}
		}
		if sess.GrantRequest != "" {
			r.Header[session.HeaderGrantRequest] = []string{sess.GrantRequest}
		}
	}
	if req.Lane != admission.Login {
		return req // only the login lane's per-client bucket needs the address
	}
	req.Client = h.loginClient(r)
	if mode == admission.Enforce && h.room != nil {
		if t, ok := h.room.Ticket(r, time.Now()); ok {
			req.Ticket, req.Arrival = t.ID, t.Arrival
		}
		req.Patient = waitroom.IsNavigation(r)
		req.Returns = true // a login sent away gets its place as a ticket
	}
	return req
}

// loginClient keys a login's client, for the per-client bucket and the
// waiting room: its address, or the peer's as the server saw it.
func (h *Handler) loginClient(r *http.Request) string {
	if a, ok := h.clientAddr(r); ok {
		return clientKey(a)
	}
	return r.RemoteAddr
}

// admit asks the controller for a slot as the mode says: wait for one
// (enforce), take one whatever the limits (shadow, recording what enforce
// would have done), or pass (off). A request refused, or whose client left
// meanwhile, is answered here and admit reports false.
func (h *Handler) admit(rec *recorder, r *http.Request, req admission.Request, mode admission.Mode) (*admission.Permit, bool) {
	var permit *admission.Permit
	switch mode {
	case admission.Off:
		permit = h.ctrl.Pass(req)
		rec.ev.decision = admission.Passed.String()
	case admission.Shadow:
		var d admission.Decision
		d, permit = h.ctrl.Shadow(req)
		rec.ev.decision = d.String()
	default:
		presented := req.Ticket != 0
		if req.Lane == admission.Login && h.fleetLine != nil {
			h.rankInFleet(r, &req)
		}
		var err error
		permit, err = h.ctrl.Acquire(r.Context(), req)
		if req.Fleet != nil {
			h.reportToFleet(*req.Fleet, err)
		}
		if err != nil {
			h.refuse(rec, r, err)
			return nil, false
		}
		rec.ev.decision = admission.Admitted.String()
		rec.ev.queueWait = permit.Waited()
		if presented {
			waitroom.DropTicket(rec) // used up
		}
		h.metrics.ObserveQueueWait(rec.ev.class.label(), rec.ev.queueWait)
	}
	if r.Context().Err() != nil {
		// The client left while we decided; forwarding now would make the
		// app do work nobody reads.
		permit.Abandon()
		rec.ev.decision = metrics.DecisionClientGone
		rec.ev.status = statusClientClosed
		h.finish(rec, r, time.Now())
		return nil, false
	}
	return permit, true
}

// rankInFleet ranks a login in the fleet's line: its place and first
// arrival are then the fleet's. When the fleet cannot rank it, it ranks in
// this replica's line, as a lanegate alone.
func (h *Handler) rankInFleet(r *http.Request, req *admission.Request) {
	rank, err := h.fleetLine.Arrive(r.Context(), req.Ticket, req.Arrival)
	if err != nil {
		return
	}
	req.Fleet = &rank
	req.Ticket, req.Arrival = rank.ID, rank.Arrival
}

// reportToFleet tells the fleet's line how a login ranked there left the
// controller: err is Acquire's.
func (h *Handler) reportToFleet(rank admission.Rank, err error) {
	var se *admission.ShedError
	switch {
	case err == nil:
		h.fleetLine.Used(rank)
	case errors.As(err, &se) && se.Place != nil:
		h.fleetLine.Away(rank, se.Place.Until)
	case errors.As(err, &se):
		h.fleetLine.Drop(rank)
	default:
		// The client left the line; the controller keeps the place of a
		// login that came with a ticket, and so does the fleet, a while.
		h.fleetLine.Gone(rank)
	}
}

// fleetRoomLine is the waiting room's line in a fleet: the controller's,
// with every place it keeps also reported to the fleet's line, so it
// counts ahead of later logins on every replica.
type fleetRoomLine struct {
	waitLine
	fleet FleetLine
}

// waitLine names the embedded line apart from its Line method.
type waitLine = waitroom.Line

func (l fleetRoomLine) Keep(client string, id uint64, arrival, until time.Time) (admission.Place, error) {
	p, err := l.waitLine.Keep(client, id, arrival, until)
	if err == nil {
		l.fleet.Kept(p)
	}
	return p, err
}

// forward relays r to the upstream, then releases permit (nil for a
// bypassed request). The app keeps its database connection until it has
// written the last byte, so the slot is held until then: for a response
// that fits the response buffer, until the app is done, after which the
// client is fed from memory at its own pace; for any other, until the last
// byte is relayed to the client.
//
// When the body cannot be relayed to its end, because the client or the
// upstream went away mid-body, ReverseProxy aborts the handler by panicking
// with http.ErrAbortHandler. The release is deferred so that it runs then
// too: a slot skipped there would be lost for good.
func (h *Handler) forward(rec *recorder, r *http.Request, permit *admission.Permit, start time.Time) {
	if permit != nil {
		rec.bufs = h.buffers
	}
	if r.Header["Upgrade"] != nil {
		// A 101's headers are written by ReverseProxy itself, past the
		// recorder; modifyResponse finds it through the request.
		r = r.WithContext(context.WithValue(r.Context(), recorderKey{}, rec))
	}
	defer func() {
		// Trailers are written after the handler returns, from the header
		// map: lanegate's headers must not leave as trailers either.
		stripLanegateTrailers(rec.Header())
		end := time.Now()
		h.upstreamDone(rec, permit, start, end)
		h.finish(rec, r, end)
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
				h.upstreamDone(rec, permit, start, time.Now())
				if rec.buffering {
					rec.buffering = false
					rec.drain()
				}
				http.NewResponseController(rec.ResponseWriter).Flush()
			}
			panic(v)
		}
	}()
	rec.permit = permit
	h.rp.ServeHTTP(rec, r)
	if !rec.buffering {
		return
	}
	// The app is done and the whole body is here: free the slot first,
	// then feed the client, for as long as it takes (each write bounded by
	// the listener's send timeout).
	h.upstreamDone(rec, permit, start, time.Now())
	rec.buffering = false
	if err := rec.drain(); err != nil {
		// The client left or was cut: what it got is a response cut short.
		panic(http.ErrAbortHandler)
	}
}

// upstreamDone releases the request's slot, once, when the app is done with
// it: at end, or, after a 504 while the app still works on the request,
// when it is done.
func (h *Handler) upstreamDone(rec *recorder, permit *admission.Permit, start, end time.Time) {
	if rec.upstreamDone {
		return
	}
	rec.upstreamDone = true
	if rec.upstreamFailed {
		// Refused, or broken before any answer: not a request the app
		// completed, for the estimates. (A 504 is not: the app worked
		// on it, and its hold says how long.)
		permit.Failed()
	}
	if hold := rec.hold; hold != nil && permit != nil {
		// The app still works on the request it timed out on, and holds
		// its database connection: so does the slot.
		hold.OnDone(permit.Release)
	} else {
		permit.ReleaseAt(end)
	}
	rec.ev.upstream = end.Sub(start)
	h.metrics.ObserveUpstream(rec.ev.class.label(), rec.ev.upstream)
}

// recorderKey carries a protocol upgrade's recorder in its request's
// context, for modifyResponse.
type recorderKey struct{}

// modifyResponse filters a 101 Switching Protocols response's headers as
// the recorder filters every other's: ReverseProxy writes a 101 to the
// hijacked connection itself, so without this the app's X-Lanegate-Grant
// and X-Lanegate-Revoke would reach the client and a revocation sent with
// a protocol switch would not be applied.
func (h *Handler) modifyResponse(res *http.Response) error {
	if res.StatusCode != http.StatusSwitchingProtocols {
		return nil
	}
	if rec, ok := res.Request.Context().Value(recorderKey{}).(*recorder); ok {
		rec.learn(res.Header, res.StatusCode)
		return nil
	}
	delete(res.Header, session.HeaderGrant)
	delete(res.Header, session.HeaderRevoke)
	return nil
}

// refuse answers a request the controller did not admit.
func (h *Handler) refuse(rec *recorder, r *http.Request, err error) {
	ev := &rec.ev
	var se *admission.ShedError
	if !errors.As(err, &se) {
		// The client went away while queued: there is nobody to answer.
		ev.decision = metrics.DecisionClientGone
		ev.status = statusClientClosed
		h.finish(rec, r, time.Now())
		return
	}
	ev.decision = admission.DecisionOf(err).String()
	if se.Place != nil && h.room != nil {
		h.room.Answer(rec, r, se)
		h.finish(rec, r, time.Now())
		return
	}
	reply.Shed(rec, r, ev.class.Lane, se)
	h.finish(rec, r, time.Now())
}
