package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Causes of a request's context ending, told apart with context.Cause.
var (
	errClientCancel = errors.New("soak: client cancelled")
	errHung         = errors.New("soak: request hung")
	errFinished     = errors.New("soak: request finished")
)

// cancelMode is when a client gives up on its request.
type cancelMode int

const (
	cancelNone cancelMode = iota
	// cancelBeforeHeaders cancels a random delay after the request was
	// fully written, unless the response headers came first: the request
	// is then queued in lanegate or waiting for the upstream.
	cancelBeforeHeaders
	// cancelMidBody cancels after a random part of a 200's body was read.
	cancelMidBody
)

// plan is one request and how its client behaves.
type plan struct {
	kind        kind
	method      string
	path        string
	body        []byte
	json        bool // Accept: application/json
	slowUpload  bool // the body trickles in pieces
	slowRead    bool // the response is read in small pieces with pauses
	cancel      cancelMode
	cancelDelay time.Duration // cancelBeforeHeaders: after the write
	watch       string        // cancelBeforeHeaders: the headerWatch id
	cancelFrac  float64       // cancelMidBody: this fraction of the body
}

// cancelWindow is the span a before-headers cancellation is drawn from:
// about the time a request of the kind spends queued and upstream, so it
// lands sometimes in the queue, sometimes upstream, sometimes too late.
func (k kind) cancelWindow() time.Duration {
	switch k {
	case kindLogin:
		return 1500 * time.Millisecond
	case kindCore:
		return 400 * time.Millisecond
	case kindExport:
		return 4 * time.Second
	}
	return 10 * time.Millisecond
}

// newPlan draws a request: 15 % logins, 60 % core, 8 % exports, 17 %
// static files.
func newPlan(rng *rand.Rand, o *options) plan {
	var p plan
	switch x := rng.IntN(100); {
	case x < 15:
		p.kind, p.method, p.path = kindLogin, http.MethodPost, "/accounts/login/"
		p.body = fmt.Appendf(nil, "login=user%d&password=correct-horse-battery-%d", rng.IntN(10000), rng.IntN(1000000))
	case x < 75:
		p.kind, p.method, p.path = kindCore, http.MethodGet, "/dashboard/"
		if rng.IntN(2) == 0 {
			p.path = fmt.Sprintf("/api/items/%d/", rng.IntN(100000))
		}
	case x < 83:
		p.kind, p.method, p.path = kindExport, http.MethodGet, fmt.Sprintf("/reports/%d.csv", rng.IntN(1000))
	default:
		p.kind, p.method, p.path = kindStatic, http.MethodGet, fmt.Sprintf("/static/app.%d.js", rng.IntN(1000))
	}
	p.json = rng.IntN(2) == 0
	if rng.Float64() < o.cancelRate {
		p.cancel = cancelBeforeHeaders
		if p.kind != kindLogin && rng.IntN(2) == 0 {
			p.cancel = cancelMidBody
		}
		p.cancelDelay = randDur(rng, p.kind.cancelWindow())
		if p.cancel == cancelBeforeHeaders {
			p.watch = strconv.FormatUint(rng.Uint64(), 36)
		}
		p.cancelFrac = 0.05 + 0.9*rng.Float64()
	}
	if rng.Float64() < o.slowRate {
		if p.kind == kindLogin {
			p.slowUpload = true
		} else {
			p.slowRead = true
		}
	}
	return p
}

// client sends the soak's requests to lanegate.
type client struct {
	base string
	hc   *http.Client
	tr   *http.Transport
	o    *options
}

func newClient(base string, o *options) *client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        4 * o.concurrency,
		MaxIdleConnsPerHost: 4 * o.concurrency,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
	}
	return &client{base: base, tr: tr, hc: &http.Client{Transport: tr}, o: o}
}

// closeIdle closes the client's idle keep-alive connections, so their
// server-side goroutines in lanegate end.
func (c *client) closeIdle() { c.tr.CloseIdleConnections() }

func (c *client) close() { c.tr.CloseIdleConnections() }

// outcome is what became of one request, from the client's side.
type outcome struct {
	kind    kind
	sent    bool // lanegate certainly received it: fully written, or answered
	writes  int  // times the transport wrote it (more than 1: it retried)
	status  int  // 0 when no response headers arrived
	cancel  cancelMode
	hung    bool
	latency time.Duration // until the last body byte, or the failure
	leftAt  time.Time     // when a before-headers cancellation fired
	problem string        // why the response was not one of the expected
}

// trouble is why the outcome is not one of the expected ones, or "".
func (o outcome) trouble() string {
	problem := o.problem
	if !o.sent && problem == "" && !o.hung {
		problem = "never fully written, and no response"
	}
	if o.writes > 1 {
		// lanegate may have counted the first attempt, or not.
		problem = join(problem, fmt.Sprintf("written %d times (the transport retried)", o.writes))
	}
	return problem
}

// slowBody trickles a request body in four pieces with pauses of
// 100-400 ms, each cut short if the request ends.
type slowBody struct {
	ctx    context.Context
	rest   []byte
	pauses []time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	if len(b.rest) == 0 {
		return 0, io.EOF
	}
	if len(b.pauses) > 0 {
		if !sleep(b.ctx, b.pauses[0]) {
			return 0, context.Cause(b.ctx)
		}
		b.pauses = b.pauses[1:]
	}
	n := min(len(p), max(1, (len(b.rest)+len(b.pauses))/(len(b.pauses)+1)))
	n = copy(p, b.rest[:n])
	b.rest = b.rest[n:]
	return n, nil
}

// sleep waits d unless ctx ends first; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// do sends one request and reads its response as the plan says.
func (c *client) do(p plan, rng *rand.Rand) (out outcome) {
	out.kind = p.kind
	start := time.Now()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(errFinished)
	hang := time.AfterFunc(c.o.hangBound, func() { cancel(errHung) })
	defer hang.Stop()

	var (
		wrote    atomic.Bool
		writes   atomic.Int32
		once     sync.Once
		wroteNow = make(chan struct{})
	)
	trace := &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			writes.Add(1)
			if info.Err == nil {
				wrote.Store(true)
				once.Do(func() { close(wroteNow) })
			}
		},
	}
	var body io.Reader
	if p.body != nil {
		body = bytes.NewReader(p.body)
		if p.slowUpload {
			pauses := make([]time.Duration, 3)
			for i := range pauses {
				pauses[i] = 100*time.Millisecond + randDur(rng, 300*time.Millisecond)
			}
			body = &slowBody{ctx: ctx, rest: p.body, pauses: pauses}
		}
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), p.method, c.base+p.path, body)
	if err != nil {
		out.problem = fmt.Sprintf("building the request: %v", err)
		return out
	}
	if p.body != nil {
		req.ContentLength = int64(len(p.body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if p.watch != "" {
		req.Header.Set(headerWatch, p.watch)
	}
	if p.json {
		req.Header.Set("Accept", "application/json")
	} else {
		req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	}

	// A before-headers cancellation is armed only once the request is
	// fully written, so lanegate has certainly received it.
	var leftAfter atomic.Int64 // since start, when it fired
	if p.cancel == cancelBeforeHeaders {
		go func() {
			select {
			case <-wroteNow:
			case <-ctx.Done():
				return
			}
			if sleep(ctx, p.cancelDelay) {
				leftAfter.Store(int64(time.Since(start)))
				cancel(errClientCancel)
			}
		}()
	}

	resp, err := c.hc.Do(req)
	defer func() {
		out.writes = int(writes.Load())
		out.latency = time.Since(start)
	}()
	if err != nil {
		out.sent = wrote.Load()
		switch context.Cause(ctx) {
		case errClientCancel:
			out.cancel = cancelBeforeHeaders
			out.leftAt = start.Add(time.Duration(leftAfter.Load()))
		case errHung:
			out.hung = true
		default:
			out.problem = fmt.Sprintf("no response: %v", err)
		}
		return out
	}
	defer resp.Body.Close()
	// A response means lanegate had the request, even if the transport is
	// still writing a slow body (lanegate may answer before reading it).
	out.sent = true
	out.status = resp.StatusCode
	want, problem := checkHeaders(p, resp)
	out.problem = problem

	n, data, err := readBody(ctx, resp.Body, p, want, resp.StatusCode == http.StatusOK, cancel, rng)
	switch {
	case err != nil && context.Cause(ctx) == errClientCancel:
		// A mid-body cancellation, or a before-headers one that the
		// headers beat: either way the client left after the headers.
		out.cancel = cancelMidBody
	case err != nil && context.Cause(ctx) == errHung:
		out.hung = true
	case err != nil:
		out.problem = join(out.problem, fmt.Sprintf("reading the body after %d bytes: %v", n, err))
	case resp.StatusCode == http.StatusOK && want >= 0 && n != int64(want):
		out.problem = join(out.problem, fmt.Sprintf("body of %d bytes, the upstream sent %d", n, want))
	case resp.StatusCode != http.StatusOK && out.problem == "":
		out.problem = checkShedBody(p, resp, data)
	}
	return out
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// checkHeaders checks the status and headers against what lanegate may
// answer for the plan's lane, and returns the body length the upstream
// announced for a 200 (-1 otherwise).
func checkHeaders(p plan, resp *http.Response) (int, string) {
	h := resp.Header
	switch resp.StatusCode {
	case http.StatusOK:
		if got := h.Get(headerKind); got != p.kind.String() {
			return -1, fmt.Sprintf("200 from the %q handler for a %s request", got, p.kind)
		}
		n, err := strconv.Atoi(h.Get(headerBytes))
		if err != nil {
			return -1, fmt.Sprintf("200 without a valid %s: %q", headerBytes, h.Get(headerBytes))
		}
		return n, ""
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		if resp.StatusCode == http.StatusTooManyRequests && p.kind != kindLogin {
			return -1, fmt.Sprintf("429 in the %s lane, where nothing is rate limited", p.kind.lane())
		}
		if p.kind == kindStatic {
			return -1, fmt.Sprintf("%d for a bypassed request", resp.StatusCode)
		}
		if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 1 {
			return -1, fmt.Sprintf("%d with Retry-After %q", resp.StatusCode, h.Get("Retry-After"))
		}
		if h.Get("Cache-Control") != "no-store" {
			return -1, fmt.Sprintf("%d with Cache-Control %q", resp.StatusCode, h.Get("Cache-Control"))
		}
		return -1, ""
	}
	return -1, fmt.Sprintf("unexpected status %d", resp.StatusCode)
}

// checkShedBody checks a 429 or 503 body: JSON naming the lane and the
// same Retry-After for a client that asked for JSON, HTML otherwise.
func checkShedBody(p plan, resp *http.Response, data []byte) string {
	ct := resp.Header.Get("Content-Type")
	if !p.json {
		if !strings.HasPrefix(ct, "text/html") {
			return fmt.Sprintf("%d as %q to a browser", resp.StatusCode, ct)
		}
		return ""
	}
	var doc struct {
		Lane       string `json:"lane"`
		RetryAfter int    `json:"retry_after"`
	}
	if err := json.Unmarshal(data, &doc); err != nil || !strings.HasPrefix(ct, "application/json") {
		return fmt.Sprintf("%d to a JSON client as %q: %.80q", resp.StatusCode, ct, data)
	}
	if doc.Lane != p.kind.lane() || strconv.Itoa(doc.RetryAfter) != resp.Header.Get("Retry-After") {
		return fmt.Sprintf("%d body names lane %q retry_after %d; want %q and %s", resp.StatusCode, doc.Lane, doc.RetryAfter, p.kind.lane(), resp.Header.Get("Retry-After"))
	}
	return ""
}

// readBody reads the response body: slowly for a slow reader, and for a
// mid-body cancellation up to a fraction of a 200's announced length, then
// cancels and reads on until the read fails. It keeps the body of a
// non-200 for checking.
func readBody(ctx context.Context, r io.Reader, p plan, want int, ok bool, cancel context.CancelCauseFunc, rng *rand.Rand) (int64, []byte, error) {
	var keep bytes.Buffer
	buf := make([]byte, 32<<10)
	if p.slowRead {
		buf = buf[:4<<10]
	}
	cancelAt := int64(-1)
	if p.cancel == cancelMidBody && ok && want > 0 {
		cancelAt = max(1, int64(p.cancelFrac*float64(want)))
	}
	var n int64
	for {
		chunk := buf
		if cancelAt > n {
			chunk = buf[:min(int64(len(buf)), cancelAt-n)]
		}
		m, err := r.Read(chunk)
		n += int64(m)
		if !ok && keep.Len() < 4<<10 {
			keep.Write(chunk[:m])
		}
		if err == io.EOF {
			return n, keep.Bytes(), nil
		}
		if err != nil {
			return n, keep.Bytes(), err
		}
		if cancelAt > 0 && n >= cancelAt {
			cancel(errClientCancel)
			cancelAt = -1
		}
		if p.slowRead && !sleep(ctx, 10*time.Millisecond+randDur(rng, 20*time.Millisecond)) {
			// The request ended (cancelled or hung): the next read fails.
			continue
		}
	}
}

// forwardedMargin is how long after a client left lanegate may still
// forward its request without that counting as forwarding for nobody: a
// slot granted as the client leaves is fair.
const forwardedMargin = 100 * time.Millisecond

// forwardedAfterLeft counts, by kind, the requests whose client left
// before any response headers that reached the upstream more than
// forwardedMargin later: lanegate forwarded them for nobody.
func (s *stats) forwardedAfterLeft(arrival func(string) (time.Time, bool)) [numKinds]int64 {
	var n [numKinds]int64
	for _, l := range s.left {
		if at, ok := arrival(l.watch); ok && at.After(l.at.Add(forwardedMargin)) {
			n[l.kind]++
		}
	}
	return n
}

// laneStats are the client-side counts of one kind.
type laneStats struct {
	issued       int64
	sent         int64
	notSent      int64
	retried      int64
	status       map[int]int64 // by status, when headers arrived
	cancelBefore int64         // cancelled before any response headers
	cancelAfter  int64         // cancelled after the headers
	cancelPlan   int64         // planned cancellations
	slow         int64         // slow uploads or slow reads
	hung         int64
	problems     int64
	okLatency    latencyHist // 200s read to the end, not cancelled
	shedLatency  latencyHist // 429s and 503s, not cancelled
	slowest      time.Duration
}

// stats are one load phase's client-side results.
type stats struct {
	lanes    [numKinds]laneStats
	examples []string
	left     []leftRequest
	elapsed  time.Duration
}

// leftRequest is a request whose client left before any response headers.
type leftRequest struct {
	kind  kind
	watch string
	at    time.Time
}

const (
	maxExamples = 20
	maxLeft     = 200_000
)

func newStats() *stats {
	s := &stats{}
	for i := range s.lanes {
		s.lanes[i].status = map[int]int64{}
	}
	return s
}

func (s *stats) record(p plan, o outcome) {
	l := &s.lanes[p.kind]
	l.issued++
	if p.cancel != cancelNone {
		l.cancelPlan++
	}
	if p.slowRead || p.slowUpload {
		l.slow++
	}
	if o.sent {
		l.sent++
	} else {
		l.notSent++
	}
	if o.writes > 1 {
		l.retried++
	}
	if o.status != 0 {
		l.status[o.status]++
	}
	switch {
	case o.hung:
		l.hung++
	case o.cancel == cancelBeforeHeaders:
		l.cancelBefore++
		if p.watch != "" && len(s.left) < maxLeft {
			s.left = append(s.left, leftRequest{kind: p.kind, watch: p.watch, at: o.leftAt})
		}
	case o.cancel == cancelMidBody:
		l.cancelAfter++
	}
	problem := o.trouble()
	if problem != "" {
		l.problems++
		if len(s.examples) < maxExamples {
			s.examples = append(s.examples, fmt.Sprintf("%s %s: %s", p.method, p.path, problem))
		}
	}
	if !o.hung {
		l.slowest = max(l.slowest, o.latency)
	}
	if o.cancel == cancelNone && !o.hung && problem == "" {
		switch o.status {
		case http.StatusOK:
			l.okLatency.add(o.latency)
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			l.shedLatency.add(o.latency)
		}
	}
}

// merge adds t into s.
func (s *stats) merge(t *stats) {
	for i := range s.lanes {
		a, b := &s.lanes[i], &t.lanes[i]
		a.issued += b.issued
		a.sent += b.sent
		a.notSent += b.notSent
		a.retried += b.retried
		for k, v := range b.status {
			a.status[k] += v
		}
		a.cancelBefore += b.cancelBefore
		a.cancelAfter += b.cancelAfter
		a.cancelPlan += b.cancelPlan
		a.slow += b.slow
		a.hung += b.hung
		a.problems += b.problems
		a.okLatency.merge(&b.okLatency)
		a.shedLatency.merge(&b.shedLatency)
		a.slowest = max(a.slowest, b.slowest)
	}
	s.left = append(s.left, t.left[:min(len(t.left), maxLeft-len(s.left))]...)
	for _, e := range t.examples {
		if len(s.examples) < maxExamples {
			s.examples = append(s.examples, e)
		}
	}
	s.elapsed += t.elapsed
}

func merged(parts ...*stats) *stats {
	s := newStats()
	for _, p := range parts {
		s.merge(p)
	}
	return s
}

func (s *stats) sentTotal() int64 {
	var n int64
	for i := range s.lanes {
		n += s.lanes[i].sent
	}
	return n
}

func (s *stats) problems() int64 {
	var n int64
	for i := range s.lanes {
		n += s.lanes[i].problems
	}
	return n
}

func (s *stats) hung() int64 {
	var n int64
	for i := range s.lanes {
		n += s.lanes[i].hung
	}
	return n
}

func (s *stats) slowest() time.Duration {
	var d time.Duration
	for i := range s.lanes {
		d = max(d, s.lanes[i].slowest)
	}
	return d
}

// latencyHist counts durations in buckets 5 % wide from 10 µs, so its size
// is fixed however long the soak runs. Quantiles are a bucket's upper
// bound: at most 5 % high.
type latencyHist struct {
	counts [histBuckets]int64
	n      int64
	max    time.Duration
}

const (
	histBuckets = 400 // 10 µs × 1.05^400 ≈ 3,000 s
	histBase    = 10 * time.Microsecond
	histGrowth  = 1.05
)

func (h *latencyHist) add(d time.Duration) {
	i := 0
	if d > histBase {
		i = int(math.Ceil(math.Log(float64(d)/float64(histBase)) / math.Log(histGrowth)))
	}
	h.counts[min(i, histBuckets-1)]++
	h.n++
	h.max = max(h.max, d)
}

func (h *latencyHist) merge(o *latencyHist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0 < q <= 1), or 0 when empty.
func (h *latencyHist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			upper := time.Duration(float64(histBase) * math.Pow(histGrowth, float64(i)))
			return min(upper, h.max)
		}
	}
	return h.max
}

// progress are live counts for the progress line.
type progress struct {
	issued atomic.Int64
	sent   atomic.Int64
	ok     atomic.Int64
	shed   atomic.Int64
	cancel atomic.Int64
	bad    atomic.Int64
}

func (p *progress) note(o outcome) {
	if o.sent {
		p.sent.Add(1)
	}
	switch {
	case o.trouble() != "" || o.hung:
		p.bad.Add(1)
	case o.cancel != cancelNone:
		p.cancel.Add(1)
	case o.status == http.StatusOK:
		p.ok.Add(1)
	default:
		p.shed.Add(1)
	}
}

// runLoad drives lanegate with o.concurrency clients for d (or until ctx
// ends, lanegate exits or o.maxRequests are issued), then waits for every
// request under way to finish: they are not cancelled, so that each is
// counted whole. Each client pauses up to o.thinkMax between requests.
func runLoad(ctx context.Context, c *client, o *options, d time.Duration, seed uint64, phase string, gateExited <-chan struct{}, logw io.Writer) *stats {
	lctx, stop := context.WithTimeout(ctx, d)
	defer stop()
	go func() {
		select {
		case <-gateExited:
			stop()
		case <-lctx.Done():
		}
	}()
	var live progress
	start := time.Now()
	done := make(chan struct{})
	if o.progress > 0 {
		go func() {
			t := time.NewTicker(o.progress)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					fmt.Fprintf(logw, "soak: %s %s: sent %d, 200 %d, shed %d, cancelled %d, problems %d\n", phase,
						time.Since(start).Round(time.Second), live.sent.Load(), live.ok.Load(), live.shed.Load(), live.cancel.Load(), live.bad.Load())
				}
			}
		}()
	}
	results := make([]*stats, o.concurrency)
	var wg sync.WaitGroup
	for i := range o.concurrency {
		wg.Go(func() {
			st := newStats()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for lctx.Err() == nil && live.issued.Add(1) <= o.maxRequests {
				p := newPlan(rng, o)
				out := c.do(p, rng)
				st.record(p, out)
				live.note(out)
				if o.thinkMax > 0 {
					sleep(lctx, randDur(rng, o.thinkMax+1))
				}
			}
			results[i] = st
		})
	}
	wg.Wait()
	close(done)
	s := merged(results...)
	s.elapsed = time.Since(start)
	return s
}

// randDur is a random duration in [0, d), or 0 when d <= 0.
func randDur(rng *rand.Rand, d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(rng.Int64N(int64(d)))
}
