package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// Decision classes of lanegate_requests_total for the accounting.
const (
	classAdmitted  = "admitted"
	classShed      = "shed"
	classCancelled = "cancelled"
	classBypassed  = "bypassed"
	classOther     = "other"
)

// decisionClass sorts a decision label of lanegate_requests_total. The
// shed ones are admission.Decision.Shed's; "other" (pass, shadow_*,
// body_too_large, login_redirect) must stay zero in this soak: enforce
// mode, small bodies, no login-required paths.
func decisionClass(d string) string {
	switch d {
	case "admitted":
		return classAdmitted
	case "queue_full", "queue_timeout", "wait_too_long", "rate_limited", "closed":
		return classShed
	case "cancelled":
		return classCancelled
	case "bypass":
		return classBypassed
	}
	return classOther
}

// shedDecisions are the shed decisions in the order the report lists them.
func shedDecisions() []string {
	return []string{"queue_full", "queue_timeout", "wait_too_long", "rate_limited", "closed"}
}

// kinds are the request kinds in report order.
func kinds() []kind { return []kind{kindLogin, kindCore, kindExport, kindStatic} }

// byClass sums c by decision class.
func byClass(c counts) map[string]float64 {
	out := map[string]float64{}
	for _, m := range c {
		for d, v := range m {
			out[decisionClass(d)] += v
		}
	}
	return out
}

func accountingOK(c counts, s *stats) bool {
	cl := byClass(c)
	if cl[classAdmitted]+cl[classShed]+cl[classCancelled]+cl[classBypassed] != float64(s.sentTotal()) || cl[classOther] != 0 {
		return false
	}
	for _, k := range kinds() {
		if c.laneTotal(k.lane()) != float64(s.lanes[k].sent) {
			return false
		}
	}
	return true
}

func accountingDetail(c counts, s *stats) string {
	cl := byClass(c)
	var shed []string
	for _, d := range shedDecisions() {
		var n float64
		for _, lane := range c.lanes() {
			n += c.get(lane, d)
		}
		shed = append(shed, fmt.Sprintf("%s %.0f", d, n))
	}
	sum := cl[classAdmitted] + cl[classShed] + cl[classCancelled] + cl[classBypassed]
	detail := fmt.Sprintf("admitted %.0f + shed %.0f (%s) + cancelled %.0f + bypassed %.0f = %.0f; sent %d",
		cl[classAdmitted], cl[classShed], strings.Join(shed, ", "), cl[classCancelled], cl[classBypassed], sum, s.sentTotal())
	if cl[classOther] != 0 {
		detail += fmt.Sprintf("; other decisions %.0f:", cl[classOther])
		for _, lane := range c.lanes() {
			for d, v := range c[lane] {
				if decisionClass(d) == classOther && v != 0 {
					detail += fmt.Sprintf(" %s/%s %.0f", lane, d, v)
				}
			}
		}
	}
	for _, k := range kinds() {
		if got, want := c.laneTotal(k.lane()), s.lanes[k].sent; got != float64(want) {
			detail += fmt.Sprintf("; lane %s: lanegate counted %.0f, clients sent %d", k.lane(), got, want)
		}
	}
	return detail
}

// laneSeen are one lane's counts from both sides, for the consistency
// check: a 200 is an admitted (or bypassed) request, a 429 a rate-limited
// one, a 503 another shed one; lanegate's cancelled ones are requests
// whose client left before any response headers.
type laneSeen struct {
	lane                      string
	seen200, seen429, seen503 int64
	cancelBefore              int64
	admitted, rateLimited     float64
	otherShed, gateCancelled  float64
}

func seen(c counts, s *stats, k kind) laneSeen {
	l := &s.lanes[k]
	ls := laneSeen{lane: k.lane(), seen200: l.status[200], seen429: l.status[429], seen503: l.status[503], cancelBefore: l.cancelBefore}
	ls.admitted = c.get(ls.lane, "admitted") + c.get(ls.lane, "bypass")
	ls.rateLimited = c.get(ls.lane, "rate_limited")
	for _, d := range shedDecisions() {
		if d != "rate_limited" {
			ls.otherShed += c.get(ls.lane, d)
		}
	}
	ls.gateCancelled = c.get(ls.lane, "cancelled")
	return ls
}

func (ls laneSeen) ok() bool {
	return ls.admitted >= float64(ls.seen200) && ls.rateLimited >= float64(ls.seen429) &&
		ls.otherShed >= float64(ls.seen503) && ls.gateCancelled <= float64(ls.cancelBefore)
}

func consistent(c counts, s *stats) bool {
	for _, k := range kinds() {
		if !seen(c, s, k).ok() {
			return false
		}
	}
	return true
}

func consistencyDetail(c counts, s *stats) string {
	var parts []string
	for _, k := range kinds() {
		ls := seen(c, s, k)
		mark := ""
		if !ls.ok() {
			mark = " ✗"
		}
		parts = append(parts, fmt.Sprintf("%s: admitted %.0f ≥ 200s %d, rate_limited %.0f ≥ 429s %d, other shed %.0f ≥ 503s %d, cancelled %.0f ≤ client cancels before headers %d%s",
			ls.lane, ls.admitted, ls.seen200, ls.rateLimited, ls.seen429, ls.otherShed, ls.seen503, ls.gateCancelled, ls.cancelBefore, mark))
	}
	return strings.Join(parts, "; ")
}

// coverageOK reports whether the load produced what the soak is about:
// admissions in every lane, overload sheds, rate limiting, cancellations
// seen by lanegate, and client cancellations before and after headers.
func coverageOK(c counts, s *stats) bool {
	var overload, rate, cancelled float64
	for _, lane := range c.lanes() {
		overload += c.get(lane, "queue_full") + c.get(lane, "queue_timeout") + c.get(lane, "wait_too_long")
		rate += c.get(lane, "rate_limited")
		cancelled += c.get(lane, "cancelled")
	}
	var before, after, slow int64
	for _, k := range kinds() {
		if c.get(k.lane(), "admitted")+c.get(k.lane(), "bypass") == 0 {
			return false
		}
		before += s.lanes[k].cancelBefore
		after += s.lanes[k].cancelAfter
		slow += s.lanes[k].slow
	}
	return overload > 0 && rate > 0 && cancelled > 0 && before > 0 && after > 0 && slow > 0
}

func coverageDetail(c counts, s *stats) string {
	var parts []string
	for _, d := range append(shedDecisions(), "cancelled") {
		var n float64
		for _, lane := range c.lanes() {
			n += c.get(lane, d)
		}
		parts = append(parts, fmt.Sprintf("%s %.0f", d, n))
	}
	var before, after, slow int64
	for _, k := range kinds() {
		before += s.lanes[k].cancelBefore
		after += s.lanes[k].cancelAfter
		slow += s.lanes[k].slow
	}
	return fmt.Sprintf("%s; client cancels before headers %d, after %d; slow clients %d", strings.Join(parts, ", "), before, after, slow)
}

// statusAgrees compares /status's decisions with /metrics' counts.
func statusAgrees(st statusDoc, c counts) bool { return statusDetail(st, c) == "identical" }

func statusDetail(st statusDoc, c counts) string {
	var diffs []string
	for name, l := range st.Lanes {
		for d, v := range c[name] {
			if d == "body_too_large" || d == "login_redirect" {
				continue // not in /status's decisions
			}
			if float64(l.Decisions[d]) != v {
				diffs = append(diffs, fmt.Sprintf("%s/%s: status %d, metrics %.0f", name, d, l.Decisions[d], v))
			}
		}
	}
	if b := c.get("bypass", "bypass"); float64(st.Bypassed) != b {
		diffs = append(diffs, fmt.Sprintf("bypassed: status %d, metrics %.0f", st.Bypassed, b))
	}
	if len(diffs) == 0 {
		return "identical"
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}

// upstreamErrors checks that lanegate counted no upstream failure and no
// broken client body: the fake upstream never fails, and the clients
// always finish writing before they leave.
func upstreamErrors(ctx context.Context, g *gate, rep *report) error {
	ss, err := g.metrics(ctx)
	if err != nil {
		return err
	}
	var parts []string
	var total float64
	for _, s := range ss {
		switch s.name {
		case "lanegate_upstream_errors_total":
			total += s.value
			if s.value != 0 {
				parts = append(parts, fmt.Sprintf("upstream %s %.0f", s.labels["kind"], s.value))
			}
		case "lanegate_client_body_errors_total":
			total += s.value
			if s.value != 0 {
				parts = append(parts, fmt.Sprintf("client bodies %.0f", s.value))
			}
		}
	}
	detail := "none"
	if len(parts) > 0 {
		detail = strings.Join(parts, ", ")
	}
	rep.check("lanegate counted no upstream or client-body errors", total == 0, detail)
	return nil
}

// checkResult is one check's verdict.
type checkResult struct {
	name, detail string
	pass         bool
}

// report collects the soak's results and renders them.
type report struct {
	opts              options
	started, finished time.Time
	commit, goVersion string
	cpus              int
	loadStart         string
	loadEnd           string
	env               []string
	warm, load        *stats
	interrupted       bool
	base, end         resources
	baseStable        bool
	endElapsed        time.Duration
	loadCounts        counts
	upstream          [numKinds]int64
	// forwardedAfterLeft are load-phase requests lanegate forwarded to the
	// upstream after their client had left, by kind.
	forwardedAfterLeft [numKinds]int64
	logs               logSummary
	checks             []checkResult
}

func (r *report) check(name string, pass bool, detail string) {
	r.checks = append(r.checks, checkResult{name: name, detail: detail, pass: pass})
}

func (r *report) passed() bool {
	for _, c := range r.checks {
		if !c.pass {
			return false
		}
	}
	return len(r.checks) > 0
}

func verdict(pass bool) string {
	if pass {
		return "PASS"
	}
	return "FAIL"
}

func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	case d < 10*time.Second:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// table renders rows as a Markdown table with padded columns, readable
// as text too. Columns after the first are right-aligned.
func table(rows [][]string) string {
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			width[i] = max(width[i], len([]rune(cell)))
		}
	}
	var b strings.Builder
	for n, row := range rows {
		b.WriteString("|")
		for i, cell := range row {
			pad := strings.Repeat(" ", width[i]-len([]rune(cell)))
			if i == 0 {
				b.WriteString(" " + cell + pad + " |")
			} else {
				b.WriteString(" " + pad + cell + " |")
			}
		}
		b.WriteString("\n")
		if n == 0 {
			b.WriteString("|")
			for i, w := range width {
				if i == 0 {
					b.WriteString(strings.Repeat("-", w+2) + "|")
				} else {
					b.WriteString(strings.Repeat("-", w+1) + ":|")
				}
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func (r *report) markdown() string {
	var b strings.Builder
	o := r.opts
	pass := r.passed()
	fmt.Fprintf(&b, "## Soak, %s: %s\n\n", r.started.Format("2006-01-02 15:04 UTC"), verdict(pass))
	fmt.Fprintf(&b, "    go run ./bench/soak %s\n\n", strings.Join(os.Args[1:], " "))
	commit := r.commit
	if commit == "" {
		commit = "(unknown commit)"
	}
	fmt.Fprintf(&b, "lanegate %s built with %s; %d CPUs; load average %s at the start, %s at the end "+
		"(the soak, lanegate and the upstream share the machine, and other work may run on it).\n\n",
		commit, r.goVersion, r.cpus, orDash(r.loadStart), orDash(r.loadEnd))
	fmt.Fprintf(&b, "%d clients (%.3g× the budget of %d), each pausing 0-%s between requests; %s warm-up, then %s of load "+
		"(its last requests finished %s after it began; seed %d)",
		o.concurrency, float64(o.concurrency)/float64(o.budget), o.budget, o.thinkMax, o.warmup, o.duration,
		r.load.elapsed.Round(100*time.Millisecond), o.seed)
	if r.interrupted {
		b.WriteString(" — **interrupted before -duration**")
	}
	b.WriteString(". Mix: 15 % login POSTs, 60 % core GETs, 8 % export GETs (streamed over 1-3 s), 17 % static GETs (bypass); ")
	fmt.Fprintf(&b, "%.0f %% of requests cancelled by the client at a random moment after being fully written, %.0f %% from slow clients (slow uploads for logins, slow reads otherwise).\n\n",
		100*o.cancelRate, 100*o.slowRate)
	fmt.Fprintf(&b, "lanegate's configuration (LANEGATE_UPSTREAM is the soak's fake upstream): `%s`\n\n", strings.Join(soakVars(r.env), "` `"))

	secs := r.load.elapsed.Seconds()
	sent := r.load.sentTotal()
	cpu := r.end.cpuSeconds - r.base.cpuSeconds
	fmt.Fprintf(&b, "Load phase: %d requests sent (%.0f/s); lanegate used %.1f CPU-seconds from the baseline to the end (%.2f cores over the load phase).\n\n",
		sent, float64(sent)/secs, cpu, cpu/secs)

	b.WriteString("### What the clients saw (load phase)\n\n")
	rows := [][]string{{"lane", "sent", "200", "429", "503", "cancelled before headers", "… forwarded after", "cancelled after headers", "slow", "problems", "200 p50", "200 p99", "shed p50", "shed p99"}}
	for _, k := range kinds() {
		l := &r.load.lanes[k]
		rows = append(rows, []string{k.lane(), itoa(l.sent), itoa(l.status[200]), itoa(l.status[429]), itoa(l.status[503]),
			itoa(l.cancelBefore), itoa(r.forwardedAfterLeft[k]), itoa(l.cancelAfter), itoa(l.slow), itoa(l.problems),
			ms(l.okLatency.quantile(.5)), ms(l.okLatency.quantile(.99)), ms(l.shedLatency.quantile(.5)), ms(l.shedLatency.quantile(.99))})
	}
	b.WriteString(table(rows))
	fmt.Fprintf(&b, "\n\"… forwarded after\" are requests cancelled before any response headers that lanegate still forwarded to the upstream more than %s after the client left. "+
		"Latencies are from the client's first byte to the last byte of the response, for requests not cancelled; quantiles within 5 %%.\n\n", forwardedMargin)

	b.WriteString("### What lanegate counted (load phase, lanegate_requests_total)\n\n")
	head := append([]string{"lane", "admitted"}, shedDecisions()...)
	head = append(head, "cancelled", "bypass", "other", "total", "clients sent")
	rows = [][]string{head}
	for _, k := range kinds() {
		lane := k.lane()
		row := []string{lane, ftoa(r.loadCounts.get(lane, "admitted"))}
		var other float64
		for d, v := range r.loadCounts[lane] {
			if decisionClass(d) == classOther {
				other += v
			}
		}
		for _, d := range shedDecisions() {
			row = append(row, ftoa(r.loadCounts.get(lane, d)))
		}
		row = append(row, ftoa(r.loadCounts.get(lane, "cancelled")), ftoa(r.loadCounts.get(lane, "bypass")), ftoa(other),
			ftoa(r.loadCounts.laneTotal(lane)), itoa(r.load.lanes[k].sent))
		rows = append(rows, row)
	}
	b.WriteString(table(rows))
	fmt.Fprintf(&b, "\nThe upstream received over the whole run: login %d, core %d, export %d, static %d.\n\n",
		r.upstream[kindLogin], r.upstream[kindCore], r.upstream[kindExport], r.upstream[kindStatic])

	b.WriteString("### lanegate's resources (from /metrics, lanegate idle, client connections closed)\n\n")
	rows = [][]string{
		{"", "after the warm-up", "after the load", "allowed"},
		{"go_goroutines", ftoa(r.base.goroutines), ftoa(r.end.goroutines), fmt.Sprintf("≤ %s", ftoa(r.base.goroutines+float64(o.tolGoroutines)))},
		{"go_memstats_heap_inuse_bytes", mib(r.base.heapInuse), mib(r.end.heapInuse), "≤ " + mib(heapLimit(&o, r.base))},
		{"process_open_fds", ftoa(r.base.fds), ftoa(r.end.fds), fmt.Sprintf("≤ %s", ftoa(r.base.fds+float64(o.tolFDs)))},
	}
	b.WriteString(table(rows))
	stable := "settled (goroutines and fds unchanged for 2 s)"
	if !r.baseStable {
		stable = fmt.Sprintf("**had not settled** within %s; the last reading is used", o.settle)
	}
	fmt.Fprintf(&b, "\nThe baseline is read after the warm-up's requests finished and lanegate went idle, once %s. "+
		"The end figures are polled for up to %s until within the limits (took %s); GC timing in lanegate is not controlled.\n\n",
		stable, o.settle, r.endElapsed.Round(time.Millisecond))

	b.WriteString("### Checks\n\n")
	rows = [][]string{{"check", "result", "detail"}}
	for _, c := range r.checks {
		rows = append(rows, []string{c.name, verdict(c.pass), strings.ReplaceAll(c.detail, "|", "\\|")})
	}
	b.WriteString(checkTable(rows))
	if len(r.warm.examples)+len(r.load.examples) > 0 {
		b.WriteString("\nFirst problems seen:\n\n")
		for _, e := range merged(r.warm, r.load).examples {
			fmt.Fprintf(&b, "- `%s`\n", e)
		}
	}
	fmt.Fprintf(&b, "\nlanegate logged %d warnings and %d errors.\n", r.logs.warnings, r.logs.errors)
	for _, l := range r.logs.notable {
		fmt.Fprintf(&b, "    %s\n", l)
	}
	passed := 0
	for _, c := range r.checks {
		if c.pass {
			passed++
		}
	}
	fmt.Fprintf(&b, "\n**%s**: %d of %d checks passed; %s in all.\n", verdict(pass), passed, len(r.checks), r.finished.Sub(r.started).Round(time.Second))
	return b.String()
}

// checkTable is table with every column left-aligned.
func checkTable(rows [][]string) string {
	var b strings.Builder
	for n, row := range rows {
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		if n == 0 {
			b.WriteString("|---|---|---|\n")
		}
	}
	return b.String()
}

func problemDetail(s *stats) string {
	var parts []string
	for _, k := range kinds() {
		l := &s.lanes[k]
		var odd []string
		for code, n := range l.status {
			if code != 200 && code != 429 && code != 503 {
				odd = append(odd, fmt.Sprintf("%d×%d", n, code))
			}
		}
		slices.Sort(odd)
		if l.problems > 0 || len(odd) > 0 || l.notSent > 0 || l.retried > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d problems, not sent %d, retried %d, other statuses [%s]", k.lane(), l.problems, l.notSent, l.retried, strings.Join(odd, " ")))
		}
	}
	if len(parts) == 0 {
		return "only 200, and 429/503 with Retry-After and no-store (JSON or HTML as asked), bodies whole"
	}
	return strings.Join(parts, "; ")
}

func itoa(n int64) string   { return fmt.Sprintf("%d", n) }
func ftoa(v float64) string { return fmt.Sprintf("%.0f", v) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
