package deploy

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const (
	alertsPath    = "monitoring/alerts.yaml"
	dashboardPath = "monitoring/grafana-dashboard.json"
)

// promqlKeywords are the words of PromQL that are not metric names:
// aggregation operators (which may stand before "by (...)" rather than
// before their parenthesis), binary and set operators and modifiers.
var promqlKeywords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true,
}

// promqlGrouping are the keywords whose parenthesized list names labels.
var promqlGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// promqlMetrics returns the metric names an expression selects, in
// order, each once. It drops string literals, label matchers ({...}),
// ranges ([...]), Grafana's $variables, numbers and durations, function
// names (an identifier before "("), keywords, and the label lists of
// by, without, on, ignoring, group_left and group_right: what is left
// are the metric names.
func promqlMetrics(expr string) []string {
	var out []string
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
	}
	next := func(i int) int { // the next non-space position at or after i
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	skipString := func(i int) int { // i at the opening quote; returns past the closing one
		q := expr[i]
		for i++; i < len(expr) && expr[i] != q; i++ {
			if expr[i] == '\\' && q != '`' {
				i++
			}
		}
		return i + 1
	}
	skipGroup := func(i int, open, close byte) int { // i at open; returns past its close
		depth := 0
		for i < len(expr) {
			switch c := expr[i]; {
			case c == '"' || c == '\'' || c == '`':
				i = skipString(i)
				continue
			case c == open:
				depth++
			case c == close:
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(i)
		case c == '{':
			i = skipGroup(i, '{', '}')
		case c == '[':
			i = skipGroup(i, '[', ']')
		case c == '$':
			for i++; i < len(expr) && (isIdent(expr[i], false) || expr[i] == '{' || expr[i] == '}'); i++ {
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.') {
				i++
			}
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word, k := expr[i:j], next(j)
			switch {
			case promqlGrouping[word] && k < len(expr) && expr[k] == '(':
				j = skipGroup(k, '(', ')')
			case promqlKeywords[word] || k < len(expr) && expr[k] == '(':
			default:
				if !slices.Contains(out, word) {
					out = append(out, word)
				}
			}
			i = j
		default:
			i++
		}
	}
	return out
}

func TestPromQLMetrics(t *testing.T) {
	for _, tt := range []struct {
		expr string
		want []string
	}{
		{`sum by (instance, lane) (rate(lanegate_requests_total{decision=~"a|b}"}[5m])) / sum by (lane) (rate(lanegate_requests_total{x='{y'}[$__rate_interval])) > 0.05`,
			[]string{"lanegate_requests_total"}},
		{`histogram_quantile(0.95, sum by (lane, le) (rate(lanegate_queue_wait_seconds_bucket{instance=~"$instance"}[5m])))`,
			[]string{"lanegate_queue_wait_seconds_bucket"}},
		{`lanegate_effective_budget == 0 and lanegate_static_budget > 0`, []string{"lanegate_effective_budget", "lanegate_static_budget"}},
		{`up{job="lanegate"} == 0`, []string{"up"}},
		{`a_metric offset 5m unless on (x) group_left (y) other:metric * 1e3`, []string{"a_metric", "other:metric"}},
		{`sum without (le) (lanegte_typo) or count(x)by(lane)`, []string{"lanegte_typo", "x"}},
	} {
		if got := promqlMetrics(tt.expr); !slices.Equal(got, tt.want) {
			t.Errorf("promqlMetrics(%s)\n got %v\nwant %v", tt.expr, got, tt.want)
		}
	}
}

// prometheusOwn are series Prometheus makes itself for every target.
var prometheusOwn = map[string]bool{"up": true}

// unexported returns the names that are not in what lanegate exports:
// a histogram family exports name_bucket, name_sum and name_count, a
// summary name_sum and name_count, and never the bare name of either.
func unexported(names []string, exported map[string]string) []string {
	var out []string
	for _, name := range names {
		if typ, ok := exported[name]; ok && typ != "histogram" && typ != "summary" || prometheusOwn[name] {
			continue
		}
		ok := false
		for suffix, types := range map[string][]string{"_bucket": {"histogram"}, "_sum": {"histogram", "summary"}, "_count": {"histogram", "summary"}} {
			if base, found := strings.CutSuffix(name, suffix); found && slices.Contains(types, exported[base]) {
				ok = true
			}
		}
		if !ok {
			out = append(out, name)
		}
	}
	return out
}

// rulesFile is a Prometheus rules file, as far as the tests read it.
type rulesFile struct {
	Groups []struct {
		Name  string
		Rules []struct {
			Alert, Record, Expr string
			For                 string
			Labels, Annotations map[string]string
		}
	}
}

func readRules(t *testing.T, path string) rulesFile {
	t.Helper()
	var rf rulesFile
	if err := yaml.Unmarshal(readFile(t, path), &rf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rf
}

// dashboardExprs returns every query of a Grafana dashboard: the panels'
// targets (at any depth, rows' panels included) and the templating
// variables' label_values.
func dashboardExprs(t *testing.T, dash map[string]any) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if title, ok := x["title"].(string); ok {
				where = title
			}
			if e, ok := x["expr"].(string); ok {
				out[where] = append(out[where], e)
			}
			for k, v := range x {
				if k != "templating" {
					walk(where, v)
				}
			}
		case []any:
			for _, v := range x {
				walk(where, v)
			}
		}
	}
	walk("", dash)
	labelValues := regexp.MustCompile(`^label_values\(\s*([^,\s)]+)\s*,`)
	for _, v := range list(dash, "templating", "list") {
		if q := str(v, "query", "query"); q != "" {
			m := labelValues.FindStringSubmatch(q)
			if m == nil {
				t.Errorf("templating %s: query %q: want label_values(metric, label)", str(v, "name"), q)
				continue
			}
			out["variable "+str(v, "name")] = append(out["variable "+str(v, "name")], m[1])
		}
	}
	return out
}

func readDashboard(t *testing.T) map[string]any {
	t.Helper()
	var dash map[string]any
	if err := json.Unmarshal(readFile(t, dashboardPath), &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return dash
}

// TestMonitoringUsesExportedMetrics scrapes /metrics of an in-process
// lanegate with every optional part on, and checks that each metric the
// alerts and the dashboard read is one it exports: a metric renamed in
// metrics/ would otherwise leave a panel empty and an alert silent.
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	up, _ := upstreams(t)
	exported := startLanegate(t, up).exported(t)
	// The scrape must have the optional parts, or the check proves little.
	for _, name := range []string{"lanegate_requests_total", "lanegate_pool_size", "lanegate_fleet_share", "lanegate_session_lookups_total",
		"lanegate_waiting_room_wait_seconds", "lanegate_client_connections", "lanegate_response_buffer_bytes", "lanegate_session_store_seconds"} {
		if exported[name] == "" {
			t.Fatalf("the in-process lanegate does not export %s; the scrape is missing a part", name)
		}
	}
	if got, want := unexported([]string{"lanegate_nope", "lanegate_budget_bucket", "lanegate_queue_wait_seconds", "lanegate_queue_wait_seconds_bucket", "up"}, exported),
		[]string{"lanegate_nope", "lanegate_budget_bucket", "lanegate_queue_wait_seconds"}; !slices.Equal(got, want) {
		t.Fatalf("unexported: got %v, want %v", got, want)
	}

	used := map[string]bool{}
	check := func(where, expr string) {
		names := promqlMetrics(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", where, expr)
		}
		for _, n := range names {
			used[n] = true
		}
		if bad := unexported(names, exported); len(bad) > 0 {
			t.Errorf("%s reads %s, which lanegate does not export:\n  %s", where, strings.Join(bad, ", "), expr)
		}
	}
	for _, g := range readRules(t, alertsPath).Groups {
		for _, r := range g.Rules {
			check(alertsPath+" "+r.Alert+r.Record, r.Expr)
		}
	}
	dashUsed := map[string]bool{}
	for where, exprs := range dashboardExprs(t, readDashboard(t)) {
		for _, e := range exprs {
			check(dashboardPath+" "+where, e)
			for _, n := range promqlMetrics(e) {
				dashUsed[n] = true
			}
		}
	}
	// What the dashboard is for: requests by lane and decision, in flight
	// against the budgets, queues, the login line, the pool watcher, the
	// fleet and the session cache.
	for _, name := range []string{
		"lanegate_requests_total", "lanegate_upstream_errors_total",
		"lanegate_in_flight", "lanegate_effective_budget", "lanegate_static_budget", "lanegate_lane_in_flight",
		"lanegate_lane_queued", "lanegate_queue_wait_seconds_bucket",
		"lanegate_waiting_room_logins", "lanegate_waiting_room_wait_seconds",
		"lanegate_pool_size", "lanegate_pool_clients", "lanegate_pool_servers", "lanegate_pool_others",
		"lanegate_pool_maxwait_seconds", "lanegate_pool_watcher_up", "lanegate_pool_reading_age_seconds", "lanegate_pool_reads_total",
		"lanegate_fleet_share", "lanegate_fleet_members", "lanegate_fleet_up", "lanegate_fleet_renewals_total",
		"lanegate_session_lookups_total",
	} {
		if !dashUsed[name] {
			t.Errorf("%s has no panel reading %s", dashboardPath, name)
		}
	}
}

// TestAlertRules checks the rules' contents, then has promtool check them
// and run their unit tests.
func TestAlertRules(t *testing.T) {
	rf := readRules(t, alertsPath)
	alerts := map[string]bool{}
	jobs := regexp.MustCompile(`\bjob="([^"]+)"`)
	var scrape struct {
		ScrapeConfigs []struct {
			JobName string `yaml:"job_name"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readFile(t, "monitoring/prometheus.yml"), &scrape); err != nil {
		t.Fatal(err)
	}
	var scraped []string
	for _, s := range scrape.ScrapeConfigs {
		scraped = append(scraped, s.JobName)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, sev)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want a summary and a description", r.Alert)
			}
			for _, m := range jobs.FindAllStringSubmatch(r.Expr, -1) {
				if !slices.Contains(scraped, m[1]) {
					t.Errorf("%s selects job %q, which monitoring/prometheus.yml does not scrape", r.Alert, m[1])
				}
			}
		}
	}
	for _, name := range []string{"LanegateSheddingSustained", "LanegatePoolWatcherDegraded", "LanegatePoolReadingStale",
		"LanegateFleetDegraded", "LanegateEffectiveBudgetZero", "LanegateUpstreamErrors", "LanegateLoginWaitTooLong"} {
		if !alerts[name] {
			t.Errorf("%s has no alert %s", alertsPath, name)
		}
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string
				ExpAlerts []any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		}
	}
	if err := yaml.Unmarshal(readFile(t, "monitoring/alerts_test.yaml"), &tests); err != nil {
		t.Fatal(err)
	}
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	if len(fired) < 2 {
		t.Errorf("monitoring/alerts_test.yaml has alerts firing for %v; want at least two alerts tested", slices.Sorted(maps.Keys(fired)))
	}

	promtool := tool(t, "promtool", "prometheus", "the alerting rules")
	run(t, "", promtool, "check", "rules", alertsPath)
	run(t, "", promtool, "test", "rules", "monitoring/alerts_test.yaml")
	// --syntax-only: the credentials file it names lives on the
	// Prometheus host.
	run(t, "", promtool, "check", "config", "--syntax-only", "monitoring/prometheus.yml")
}

// TestDashboard checks the dashboard's layout and data source, and has
// promtool parse every query, with Grafana's variables given values.
func TestDashboard(t *testing.T) {
	dash := readDashboard(t)
	if str(dash, "uid") == "" || str(dash, "title") == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	vars := map[string]string{}
	for _, v := range list(dash, "templating", "list") {
		vars[str(v, "name")] = str(v, "type")
	}
	if vars["datasource"] != "datasource" {
		t.Fatalf("templating: want a datasource variable named datasource, have %v", vars)
	}
	ids := map[string]bool{}
	var cells [][24]bool // occupied grid cells, by row
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for _, p := range list(dash, "panels") {
		id, title := str(p, "id"), str(p, "title")
		if id == "" || ids[id] {
			t.Errorf("panel %q: id %q missing or not unique", title, id)
		}
		ids[id] = true
		x, y, w, h := intOf(p, "gridPos", "x"), intOf(p, "gridPos", "y"), intOf(p, "gridPos", "w"), intOf(p, "gridPos", "h")
		if w < 1 || h < 1 || x < 0 || x+w > 24 {
			t.Errorf("panel %q: gridPos x=%d w=%d h=%d does not fit 24 columns", title, x, w, h)
			continue
		}
		for len(cells) < y+h {
			cells = append(cells, [24]bool{})
		}
		for r := y; r < y+h; r++ {
			for c := x; c < x+w; c++ {
				if cells[r][c] {
					t.Errorf("panel %q overlaps another at row %d, column %d", title, r, c)
				}
				cells[r][c] = true
			}
		}
		if str(p, "type") == "row" {
			continue
		}
		if uid := str(p, "datasource", "uid"); uid != "${datasource}" {
			t.Errorf("panel %q: data source %q, want the ${datasource} variable", title, uid)
		}
		refs := map[string]bool{}
		targets := list(p, "targets")
		if len(targets) == 0 {
			t.Errorf("panel %q has no query", title)
		}
		for _, tg := range targets {
			ref, expr := str(tg, "refId"), str(tg, "expr")
			if ref == "" || refs[ref] || expr == "" {
				t.Errorf("panel %q: target %q: refId missing or repeated, or no expr", title, ref)
			}
			refs[ref] = true
			e := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(expr)
			if strings.Contains(e, "$") {
				t.Errorf("panel %q: %q uses a variable the dashboard does not define", title, expr)
			}
			fmt.Fprintf(&rules, "      - record: dashboard:panel%s_%s\n        expr: %s\n", id, ref, yamlQuote(e))
		}
	}
	promtool := tool(t, "promtool", "prometheus", "the dashboard's queries")
	f := filepath.Join(t.TempDir(), "dashboard-queries.yaml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "", promtool, "check", "rules", f)
}

func intOf(v any, path ...any) int {
	n, _ := get(v, path...).(float64)
	return int(n)
}

// yamlQuote quotes s as a YAML double-quoted scalar (JSON's quoting is
// a subset YAML reads).
func yamlQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
