package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// gateEnv is lanegate's environment: this process's, without any
// LANEGATE_ variable, plus the soak's configuration. Everything is
// configured through LANEGATE_ variables; the ports are chosen by the
// kernel (port 0) and read back from lanegate's start-up log line.
func gateEnv(o options, upstream string) []string {
	b := o.budget
	set := []string{
		"LANEGATE_LISTEN=127.0.0.1:0",
		"LANEGATE_ADMIN_LISTEN=127.0.0.1:0",
		"LANEGATE_UPSTREAM=" + upstream,
		"LANEGATE_ADMISSION=enforce",
		"LANEGATE_BUDGET=" + strconv.Itoa(b),
		// Fixed, so the login lane (max min(cpus, budget/2)) does not
		// depend on the machine running the soak.
		"LANEGATE_UPSTREAM_CPUS=2",
		// Short queues and timeouts, so that every kind of shed happens.
		"LANEGATE_LOGIN_QUEUE=" + strconv.Itoa(b),
		"LANEGATE_LOGIN_MAX_HOLD=1s",
		"LANEGATE_CORE_QUEUE=" + strconv.Itoa(2*b),
		"LANEGATE_CORE_QUEUE_TIMEOUT=250ms",
		"LANEGATE_EXPORT_PATHS=/reports/",
		"LANEGATE_EXPORT_QUEUE=" + strconv.Itoa(max(1, b/4)),
		// Longer than an export's slot time (1.5-3.5 s): with a shorter
		// one, early rejection (position × service time ÷ the lane's
		// running requests, at least 1) refuses every export that finds
		// no free slot whenever fewer than two run, however soon a
		// borrowed slot would free, and the lane starves.
		"LANEGATE_EXPORT_QUEUE_TIMEOUT=5s",
		// Below what the two login slots complete (about 5/s with slow
		// uploads holding slots), so that the bucket refuses (429) as well
		// as the queue (503): a login shed for want of a slot gets its
		// token back, so a faster bucket would never run dry.
		"LANEGATE_LOGIN_RATE=4",
		"LANEGATE_LOGIN_BURST=8",
		// The waiting room answers some logins outside the controller's
		// decisions (waiting pages) and ranks retries by ticket; the soak's
		// clients are not browsers and never retry, so it would only blur
		// the accounting. Off: every login is one controller decision.
		"LANEGATE_WAITING_ROOM=false",
		// Slow uploads pause well under this.
		"LANEGATE_BODY_READ_TIMEOUT=10s",
		"LANEGATE_SHUTDOWN_TIMEOUT=5s",
		"LANEGATE_ACCESS_LOG=false",
		"LANEGATE_LOG_FORMAT=json",
		"LANEGATE_LOG_LEVEL=info",
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LANEGATE_") {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// soakVars is the LANEGATE_ part of env, for the report.
func soakVars(env []string) []string {
	var vars []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "LANEGATE_") && !strings.HasPrefix(kv, "LANEGATE_UPSTREAM=") {
			vars = append(vars, kv)
		}
	}
	return vars
}

// gate is the lanegate subprocess.
type gate struct {
	cmd      *exec.Cmd
	proxyURL string
	adminURL string
	admin    *http.Client
	log      *logWatch

	exited  chan struct{} // closed when the process has exited
	waitErr error         // cmd.Wait's result, once exited is closed
}

// startGate starts bin with env and waits for it to announce its
// addresses.
func startGate(ctx context.Context, bin, dir string, env []string) (*gate, error) {
	lw := newLogWatch()
	cmd := exec.Command(bin)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stderr = lw
	cmd.Stdout = lw
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting lanegate: %w", err)
	}
	g := &gate{
		cmd:    cmd,
		log:    lw,
		exited: make(chan struct{}),
		admin:  &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2}},
	}
	go func() {
		g.waitErr = cmd.Wait()
		close(g.exited)
	}()
	t := time.NewTimer(20 * time.Second)
	defer t.Stop()
	select {
	case a := <-lw.started:
		g.proxyURL, g.adminURL = "http://"+a.proxy, "http://"+a.admin
		return g, nil
	case <-g.exited:
		return nil, fmt.Errorf("lanegate exited at start (%v):\n%s", g.waitErr, lw.tailText())
	case <-t.C:
		g.kill()
		return nil, fmt.Errorf("lanegate did not announce its addresses within 20s:\n%s", lw.tailText())
	case <-ctx.Done():
		g.kill()
		return nil, fmt.Errorf("starting lanegate: %w", ctx.Err())
	}
}

// stop sends SIGTERM and waits up to bound for lanegate to exit. It
// returns the exit status.
func (g *gate) stop(bound time.Duration) (int, error) {
	select {
	case <-g.exited:
		return -1, fmt.Errorf("lanegate had already exited: %v", g.waitErr)
	default:
	}
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return -1, fmt.Errorf("signalling lanegate: %w", err)
	}
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-g.exited:
	case <-t.C:
		g.kill()
		return -1, fmt.Errorf("lanegate did not exit within %s of SIGTERM; killed", bound)
	}
	var ee *exec.ExitError
	if errors.As(g.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	if g.waitErr != nil {
		return -1, fmt.Errorf("waiting for lanegate: %w", g.waitErr)
	}
	return 0, nil
}

// alive returns an error with lanegate's last log lines if it has exited
// (during phase).
func (g *gate) alive(phase string) error {
	select {
	case <-g.exited:
		return fmt.Errorf("lanegate exited during %s (%v); its last lines:\n%s", phase, g.waitErr, g.log.tailText())
	default:
		return nil
	}
}

// kill ends the process if it still runs, and waits for it.
func (g *gate) kill() {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Kill()
	<-g.exited
}

// get fetches an admin endpoint.
func (g *gate) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.adminURL+path, nil)
	if err != nil {
		return nil, fmt.Errorf("admin %s: %w", path, err)
	}
	resp, err := g.admin.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("admin %s: reading the body: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin %s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// statusDoc is the part of lanegate's /status document the soak reads.
type statusDoc struct {
	Mode     string `json:"mode"`
	Budget   int    `json:"budget"`
	InFlight int    `json:"in_flight"`
	Bypassed uint64 `json:"bypassed"`
	Lanes    map[string]struct {
		InFlight  int               `json:"in_flight"`
		Queued    int               `json:"queued"`
		Admitted  uint64            `json:"admitted"`
		Shed      uint64            `json:"shed"`
		Decisions map[string]uint64 `json:"decisions"`
	} `json:"lanes"`
	Anonymous struct {
		InFlight int `json:"in_flight"`
		Queued   int `json:"queued"`
	} `json:"anonymous"`
	WaitingRoom json.RawMessage `json:"waiting_room"`
}

// idle reports whether nothing is in flight or queued in any lane.
func (s statusDoc) idle() bool {
	if s.InFlight != 0 || s.Anonymous.InFlight != 0 || s.Anonymous.Queued != 0 {
		return false
	}
	for _, l := range s.Lanes {
		if l.InFlight != 0 || l.Queued != 0 {
			return false
		}
	}
	return true
}

func (g *gate) status(ctx context.Context) (statusDoc, error) {
	var st statusDoc
	body, err := g.get(ctx, "/status")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("admin /status: %w", err)
	}
	return st, nil
}

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseMetrics reads the Prometheus text exposition format: comments are
// skipped, every other line is name{labels} value [timestamp].
func parseMetrics(data []byte) ([]sample, error) {
	var out []sample
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d %q: %w", n+1, line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return s, errors.New("no value")
	}
	s.name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, " ,")
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.Index(line, `="`)
			if eq <= 0 {
				return s, errors.New("bad label")
			}
			key := line[:eq]
			line = line[eq+2:]
			var val strings.Builder
			for {
				if line == "" {
					return s, errors.New("unterminated label value")
				}
				c := line[0]
				line = line[1:]
				if c == '"' {
					break
				}
				if c == '\\' && line != "" {
					switch line[0] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[0])
					}
					line = line[1:]
					continue
				}
				val.WriteByte(c)
			}
			s.labels[key] = val.String()
		}
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return s, errors.New("no value")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s, fmt.Errorf("value: %w", err)
	}
	s.value = v
	return s, nil
}

func (g *gate) metrics(ctx context.Context) ([]sample, error) {
	body, err := g.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	return parseMetrics(body)
}

// counts are lanegate_requests_total by lane, then decision.
type counts map[string]map[string]float64

func (c counts) add(lane, decision string, v float64) {
	if c[lane] == nil {
		c[lane] = map[string]float64{}
	}
	c[lane][decision] += v
}

// total is every request counted, whatever its decision.
func (c counts) total() float64 {
	var t float64
	for _, m := range c {
		for _, v := range m {
			t += v
		}
	}
	return t
}

func (c counts) laneTotal(lane string) float64 {
	var t float64
	for _, v := range c[lane] {
		t += v
	}
	return t
}

func (c counts) get(lane, decision string) float64 { return c[lane][decision] }

// minus is c - base, decision by decision.
func (c counts) minus(base counts) counts {
	out := counts{}
	for lane, m := range c {
		for d, v := range m {
			out.add(lane, d, v-base[lane][d])
		}
	}
	return out
}

// lanes are c's lanes, sorted.
func (c counts) lanes() []string { return slices.Sorted(maps.Keys(c)) }

// counts reads lanegate_requests_total.
func (g *gate) counts(ctx context.Context) (counts, error) {
	ss, err := g.metrics(ctx)
	if err != nil {
		return nil, err
	}
	c := counts{}
	found := false
	for _, s := range ss {
		if s.name == "lanegate_requests_total" {
			c.add(s.labels["lane"], s.labels["decision"], s.value)
			found = true
		}
	}
	if !found {
		return nil, errors.New("admin /metrics: no lanegate_requests_total")
	}
	return c, nil
}

// resources reads lanegate's process figures.
func (g *gate) resources(ctx context.Context) (resources, error) {
	ss, err := g.metrics(ctx)
	if err != nil {
		return resources{}, err
	}
	r := resources{at: time.Now()}
	want := map[string]*float64{
		"go_goroutines":                &r.goroutines,
		"go_memstats_heap_inuse_bytes": &r.heapInuse,
		"process_open_fds":             &r.fds,
		"process_cpu_seconds_total":    &r.cpuSeconds,
	}
	for _, s := range ss {
		if p, ok := want[s.name]; ok {
			*p = s.value
			delete(want, s.name)
		}
	}
	if len(want) > 0 {
		return r, fmt.Errorf("admin /metrics: missing %s", strings.Join(slices.Sorted(maps.Keys(want)), ", "))
	}
	return r, nil
}

// listenAddrs are the addresses lanegate announced.
type listenAddrs struct{ proxy, admin string }

// logWatch reads lanegate's JSON log: it finds the start-up line with the
// bound addresses, counts warnings and errors, and keeps the first few of
// them and the last lines for the report.
type logWatch struct {
	started chan listenAddrs

	mu       sync.Mutex
	partial  []byte
	announce bool
	warnings int
	errors   int
	notable  []string
	tail     []string
}

const (
	keepNotable = 10
	keepTail    = 20
	maxLogLine  = 400
)

func newLogWatch() *logWatch { return &logWatch{started: make(chan listenAddrs, 1)} }

// Write takes lanegate's output, line by line.
func (l *logWatch) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > 1<<20 {
		l.line(string(l.partial))
		l.partial = nil
	}
	return len(p), nil
}

func (l *logWatch) line(s string) {
	short := s
	if len(short) > maxLogLine {
		short = short[:maxLogLine] + "…"
	}
	l.tail = append(l.tail, short)
	if len(l.tail) > keepTail {
		l.tail = l.tail[1:]
	}
	var rec struct {
		Level  string `json:"level"`
		Msg    string `json:"msg"`
		Listen string `json:"listen"`
		Admin  string `json:"admin"`
	}
	if json.Unmarshal([]byte(s), &rec) != nil {
		// Not JSON: a panic or a runtime message, which matters.
		l.errors++
		l.keep(short)
		return
	}
	switch rec.Level {
	case "warn":
		l.warnings++
		l.keep(short)
	case "error", "dpanic", "panic", "fatal":
		l.errors++
		l.keep(short)
	}
	if rec.Msg == "lanegate started" && !l.announce {
		l.announce = true
		l.started <- listenAddrs{proxy: rec.Listen, admin: rec.Admin}
	}
}

func (l *logWatch) keep(s string) {
	if len(l.notable) < keepNotable {
		l.notable = append(l.notable, s)
	}
}

func (l *logWatch) tailText() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.tail, "\n")
}

// logSummary is what the report says of lanegate's log.
type logSummary struct {
	warnings, errors int
	notable          []string
}

func (l *logWatch) summary() logSummary {
	l.mu.Lock()
	defer l.mu.Unlock()
	return logSummary{warnings: l.warnings, errors: l.errors, notable: slices.Clone(l.notable)}
}
