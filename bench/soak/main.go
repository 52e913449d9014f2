// Command soak is lanegate's bounded soak test. It builds lanegate from this
// repository, runs it as a real subprocess on loopback in front of a fake
// upstream served by this process, and drives it at several times its
// budget with a mix of lanes, client cancellations and slow clients. At the
// end it checks that:
//
//   - every request the clients sent is counted by lanegate exactly once:
//     admitted + shed (every kind) + cancelled + bypassed == sent, after the
//     warm-up and again after the load;
//   - lanegate's counts agree with what the clients saw (a 200 is an
//     admitted or bypassed request, a 429 a rate-limited one, a 503 another
//     shed one);
//   - every response was one of 200, or 429/503 with Retry-After, complete,
//     and none took longer than a bound;
//   - lanegate returns to idle (nothing in flight or queued) and its
//     goroutines, heap and open file descriptors return to within stated
//     tolerances of their values after the warm-up;
//   - lanegate reported no upstream errors, and shuts down cleanly.
//
// It exits 1 when any check fails. Everything runs on 127.0.0.1, and the
// program stops by itself after -warmup plus -duration plus bounded
// settling.
//
// Usage, from the repository root:
//
//	go run ./bench/soak                      # 10 minutes
//	go run ./bench/soak -duration 60s -out bench/out/soak.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// modulePath is the module whose root the soak builds lanegate from.
const modulePath = "github.com/lanegate/lanegate"

// options are the soak's flags.
type options struct {
	repo        string
	duration    time.Duration
	warmup      time.Duration
	budget      int
	concurrency int
	cancelRate  float64
	slowRate    float64
	thinkMax    time.Duration
	hangBound   time.Duration
	settle      time.Duration
	maxRequests int64
	seed        uint64
	out         string
	progress    time.Duration

	tolGoroutines int
	tolFDs        int
	tolHeapFactor float64
	tolHeapSlack  int64 // bytes
}

func parseFlags(args []string) (options, error) {
	var o options
	var heapSlackMiB int64
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.StringVar(&o.repo, "repo", "", "repository `root` to build lanegate from (default: the directory holding go.mod of "+modulePath+", searched upwards from the working directory)")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long to drive load after the warm-up")
	fs.DurationVar(&o.warmup, "warmup", 5*time.Second, "load before the resource baseline is taken")
	fs.IntVar(&o.budget, "budget", 16, "lanegate's total concurrency budget (LANEGATE_BUDGET); queues and lanes are sized from it")
	fs.IntVar(&o.concurrency, "concurrency", 0, "concurrent clients (default 6 × budget)")
	fs.Float64Var(&o.cancelRate, "cancel", 0.10, "fraction of requests the client cancels at a random moment after writing them")
	fs.Float64Var(&o.slowRate, "slow", 0.10, "fraction of requests from slow clients (logins upload slowly, others read slowly)")
	fs.DurationVar(&o.thinkMax, "think", 50*time.Millisecond, "most a client pauses between two requests (uniform from 0)")
	fs.DurationVar(&o.hangBound, "hang", 30*time.Second, "a request not finished after this long counts as hung (and is abandoned)")
	fs.DurationVar(&o.settle, "settle", 30*time.Second, "longest wait, by polling, for lanegate to go idle and for its resources to settle")
	fs.Int64Var(&o.maxRequests, "max-requests", 5_000_000, "stop sending after this many requests even if -duration has not passed")
	fs.Uint64Var(&o.seed, "seed", 0, "seed of the clients' random choices (0: from the clock)")
	fs.StringVar(&o.out, "out", "", "also write the summary as Markdown to this `file`, for bench/RESULTS.md")
	fs.DurationVar(&o.progress, "progress", 10*time.Second, "interval of progress lines on stderr (0: none)")
	fs.IntVar(&o.tolGoroutines, "tol-goroutines", 10, "goroutines allowed above the post-warm-up baseline at the end")
	fs.IntVar(&o.tolFDs, "tol-fds", 10, "open file descriptors allowed above the baseline at the end")
	fs.Float64Var(&o.tolHeapFactor, "tol-heap-factor", 2, "the end heap may be this many times the baseline ...")
	fs.Int64Var(&heapSlackMiB, "tol-heap-slack", 16, "... or the baseline plus this many MiB, whichever is larger")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.concurrency == 0 {
		o.concurrency = 6 * o.budget
	}
	o.tolHeapSlack = heapSlackMiB << 20
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	switch {
	case o.budget < 4 || o.budget > 1000:
		return o, fmt.Errorf("-budget %d: want 4 to 1000", o.budget)
	case o.concurrency < 1 || o.concurrency > 2000:
		return o, fmt.Errorf("-concurrency %d: want 1 to 2000", o.concurrency)
	case o.duration <= 0 || o.warmup <= 0:
		return o, errors.New("-duration and -warmup must be positive")
	case o.cancelRate < 0 || o.cancelRate > 1 || o.slowRate < 0 || o.slowRate > 1:
		return o, errors.New("-cancel and -slow are fractions from 0 to 1")
	case o.hangBound < 10*time.Second:
		return o, errors.New("-hang must be at least 10s: legitimate requests take a few seconds")
	case o.settle <= 0 || o.maxRequests <= 0 || o.thinkMax < 0:
		return o, errors.New("-settle and -max-requests must be positive, -think not negative")
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	passed, err := run(ctx, o, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if !passed {
		os.Exit(1)
	}
}

// run performs the soak and writes its summary to stdout; progress goes to
// logw. It returns whether every check passed, and an error when the soak
// could not be carried out at all.
func run(ctx context.Context, o options, stdout, logw io.Writer) (bool, error) {
	root, err := findRepo(o.repo)
	if err != nil {
		return false, err
	}
	tmp, err := os.MkdirTemp("", "lanegate-soak-")
	if err != nil {
		return false, fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	rep := &report{opts: o, started: time.Now().UTC(), commit: gitCommit(ctx, root), goVersion: runtime.Version(), cpus: runtime.NumCPU()}
	rep.loadStart = loadAvg()
	bin := filepath.Join(tmp, "lanegate")
	fmt.Fprintf(logw, "soak: building lanegate from %s\n", root)
	if err := buildGate(ctx, root, bin); err != nil {
		return false, err
	}

	up, err := startUpstream()
	if err != nil {
		return false, err
	}
	defer up.close()

	env := gateEnv(o, up.url)
	rep.env = env
	g, err := startGate(ctx, bin, tmp, env)
	if err != nil {
		return false, err
	}
	defer g.kill()
	fmt.Fprintf(logw, "soak: lanegate pid %d on %s, admin %s, upstream %s\n", g.cmd.Process.Pid, g.proxyURL, g.adminURL, up.url)

	if err := checkConfig(ctx, g, o); err != nil {
		return false, err
	}

	c := newClient(g.proxyURL, &o)
	defer c.close()

	// Talking to lanegate's admin port goes on after an interrupt (which
	// only cuts the load short), so the soak still settles and reports.
	bg := context.WithoutCancel(ctx)

	// Warm-up: load, then idle, then the baseline.
	fmt.Fprintf(logw, "soak: warm-up %s with %d clients\n", o.warmup, o.concurrency)
	warm := runLoad(ctx, c, &o, o.warmup, o.seed, "warm-up", g.exited, logw)
	rep.warm = warm
	if err := g.alive("the warm-up"); err != nil {
		return false, err
	}
	if err := quiesce(bg, c, g, &o, warm.sentTotal(), rep, "warm-up", logw); err != nil {
		return false, err
	}
	baseCounts, err := g.counts(bg)
	if err != nil {
		return false, err
	}
	rep.check("accounting after the warm-up", accountingOK(baseCounts, warm), accountingDetail(baseCounts, warm))
	base, stable, err := settleBaseline(bg, g, o.settle)
	if err != nil {
		return false, err
	}
	rep.base, rep.baseStable = base, stable

	// The soak proper.
	fmt.Fprintf(logw, "soak: load %s with %d clients (budget %d)\n", o.duration, o.concurrency, o.budget)
	load := runLoad(ctx, c, &o, o.duration, o.seed+1, "load", g.exited, logw)
	rep.load = load
	rep.interrupted = ctx.Err() != nil
	total := merged(warm, load)
	if err := g.alive("the load"); err != nil {
		return false, err
	}
	if err := quiesce(bg, c, g, &o, total.sentTotal(), rep, "load", logw); err != nil {
		return false, err
	}
	final, err := g.counts(bg)
	if err != nil {
		return false, err
	}
	st, err := g.status(bg)
	if err != nil {
		return false, err
	}
	rep.loadCounts = final.minus(baseCounts)
	rep.check("accounting over the whole run", accountingOK(final, total), accountingDetail(final, total))
	rep.check("accounting of the load phase alone", accountingOK(rep.loadCounts, load), accountingDetail(rep.loadCounts, load))
	rep.check("/status agrees with /metrics", statusAgrees(st, final), statusDetail(st, final))
	rep.check("lanegate's decisions cover what clients saw", consistent(rep.loadCounts, load), consistencyDetail(rep.loadCounts, load))
	rep.check("every response expected and complete", total.problems() == 0, problemDetail(total))
	rep.check(fmt.Sprintf("no request hung past %s", o.hangBound), total.hung() == 0,
		fmt.Sprintf("%d hung; slowest finished request took %s", total.hung(), total.slowest().Round(time.Millisecond)))
	rep.check("load exercised every outcome", coverageOK(rep.loadCounts, load), coverageDetail(rep.loadCounts, load))
	if err := upstreamErrors(bg, g, rep); err != nil {
		return false, err
	}

	end, elapsed, err := settleEnd(bg, g, &o, base)
	if err != nil {
		return false, err
	}
	rep.end, rep.endElapsed = end, elapsed
	for _, r := range resourceChecks(&o, base, end) {
		rep.check(r.name, r.pass, r.detail)
	}
	rep.upstream = up.seen()
	rep.forwardedAfterLeft = load.forwardedAfterLeft(up.arrival)

	exit, err := g.stop(15 * time.Second)
	rep.check("lanegate shuts down cleanly on SIGTERM", err == nil && exit == 0, shutdownDetail(exit, err))
	rep.logs = g.log.summary()
	rep.loadEnd = loadAvg()
	rep.finished = time.Now().UTC()

	md := rep.markdown()
	fmt.Fprint(stdout, md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return false, fmt.Errorf("writing -out %s: %w", o.out, err)
		}
	}
	return rep.passed(), nil
}

// checkConfig makes sure lanegate runs with the configuration the
// accounting assumes: enforce mode, the budget asked for, no waiting room.
func checkConfig(ctx context.Context, g *gate, o options) error {
	st, err := g.status(ctx)
	if err != nil {
		return err
	}
	switch {
	case st.Mode != "enforce":
		return fmt.Errorf("lanegate runs in mode %q, want enforce", st.Mode)
	case st.Budget != o.budget:
		return fmt.Errorf("lanegate's budget is %d, want %d", st.Budget, o.budget)
	case len(st.WaitingRoom) != 0 && string(st.WaitingRoom) != "null":
		return errors.New("lanegate runs with the waiting room, which the soak disables")
	}
	return nil
}

// quiesce waits for the clients' last requests to be counted: it closes
// the clients' idle connections, then polls until lanegate has nothing in
// flight or queued and has counted as many requests as were sent (or the
// settle bound passes; the accounting check then reports the difference).
func quiesce(ctx context.Context, c *client, g *gate, o *options, sent int64, rep *report, phase string, logw io.Writer) error {
	c.closeIdle()
	start := time.Now()
	idle := false
	var last int64
	err := poll(o.settle, 100*time.Millisecond, func() (bool, error) {
		st, err := g.status(ctx)
		if err != nil {
			return false, err
		}
		idle = st.idle()
		if !idle {
			return false, nil
		}
		counts, err := g.counts(ctx)
		if err != nil {
			return false, err
		}
		last = int64(counts.total())
		return last >= sent, nil
	})
	if err != nil && !errors.Is(err, errPollTimeout) {
		return err
	}
	took := time.Since(start)
	name := fmt.Sprintf("lanegate idle after the %s (nothing in flight or queued)", phase)
	rep.check(name, idle, fmt.Sprintf("within %s (bound %s)", took.Round(time.Millisecond), o.settle))
	fmt.Fprintf(logw, "soak: %s: idle=%t after %s, lanegate counted %d of %d sent\n", phase, idle, took.Round(time.Millisecond), last, sent)
	return nil
}

// errPollTimeout is poll's error when its bound passed first.
var errPollTimeout = errors.New("bound passed")

// poll calls f every interval until it reports done, fails, or bound
// passes (errPollTimeout).
func poll(bound, interval time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(bound)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := f()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return errPollTimeout
		}
		<-t.C
	}
}

// resources are lanegate's process figures from /metrics.
type resources struct {
	goroutines float64
	heapInuse  float64
	fds        float64
	cpuSeconds float64
	at         time.Time
}

// settleBaseline polls lanegate's resources after the warm-up until the
// goroutine and descriptor counts have not moved for two seconds (idle
// upstream connections close after LANEGATE_UPSTREAM_IDLE_TIMEOUT), and
// returns them, and whether they settled within bound.
func settleBaseline(ctx context.Context, g *gate, bound time.Duration) (resources, bool, error) {
	const need = 10 // polls 200 ms apart
	var last resources
	same := 0
	err := poll(bound, 200*time.Millisecond, func() (bool, error) {
		r, err := g.resources(ctx)
		if err != nil {
			return false, err
		}
		if r.goroutines == last.goroutines && r.fds == last.fds {
			same++
		} else {
			same = 0
		}
		last = r
		return same >= need, nil
	})
	if errors.Is(err, errPollTimeout) {
		return last, false, nil
	}
	return last, err == nil, err
}

// within reports whether the end resources are inside the tolerances.
func within(o *options, base, end resources) (g, h, f bool) {
	g = end.goroutines <= base.goroutines+float64(o.tolGoroutines)
	h = end.heapInuse <= heapLimit(o, base)
	f = end.fds <= base.fds+float64(o.tolFDs)
	return g, h, f
}

func heapLimit(o *options, base resources) float64 {
	return math.Max(base.heapInuse*o.tolHeapFactor, base.heapInuse+float64(o.tolHeapSlack))
}

// settleEnd polls lanegate's resources after the load until all are within
// tolerance or the settle bound passes, and returns the last reading.
func settleEnd(ctx context.Context, g *gate, o *options, base resources) (resources, time.Duration, error) {
	start := time.Now()
	var last resources
	err := poll(o.settle, 250*time.Millisecond, func() (bool, error) {
		r, err := g.resources(ctx)
		if err != nil {
			return false, err
		}
		last = r
		gok, hok, fok := within(o, base, r)
		return gok && hok && fok, nil
	})
	if err != nil && !errors.Is(err, errPollTimeout) {
		return last, 0, err
	}
	return last, time.Since(start), nil
}

type resourceCheck struct {
	name, detail string
	pass         bool
}

func resourceChecks(o *options, base, end resources) []resourceCheck {
	gok, hok, fok := within(o, base, end)
	return []resourceCheck{
		{fmt.Sprintf("goroutines back to baseline +%d", o.tolGoroutines), fmt.Sprintf("%.0f → %.0f", base.goroutines, end.goroutines), gok},
		{fmt.Sprintf("heap in use within %.3g× or +%d MiB of baseline", o.tolHeapFactor, o.tolHeapSlack>>20),
			fmt.Sprintf("%s → %s (limit %s)", mib(base.heapInuse), mib(end.heapInuse), mib(heapLimit(o, base))), hok},
		{fmt.Sprintf("open fds back to baseline +%d", o.tolFDs), fmt.Sprintf("%.0f → %.0f", base.fds, end.fds), fok},
	}
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

func shutdownDetail(exit int, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("exit status %d", exit)
}

// findRepo returns the repository root: dir itself when given, else the
// nearest directory upwards from the working directory whose go.mod
// declares modulePath.
func findRepo(dir string) (string, error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("-repo %s: %w", dir, err)
		}
		if !isRepo(abs) {
			return "", fmt.Errorf("-repo %s: no go.mod of module %s there", dir, modulePath)
		}
		return abs, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if isRepo(d) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of module %s in %s or above it; pass -repo", modulePath, wd)
		}
	}
}

func isRepo(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == modulePath
		}
	}
	return false
}

// buildGate builds lanegate into bin.
func buildGate(ctx context.Context, root, bin string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/lanegate")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build ./cmd/lanegate in %s: %w\n%s", root, err, out)
	}
	return nil
}

// gitCommit describes the commit lanegate was built from, "+dirty" when
// the working tree has changes; empty when git cannot tell.
func gitCommit(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	commit := strings.TrimSpace(string(out))
	st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output()
	if err == nil && len(strings.TrimSpace(string(st))) > 0 {
		commit += "+dirty"
	}
	return commit
}

// loadAvg is the machine's 1-, 5- and 15-minute load averages, or "" off
// Linux.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
