package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// printed is one line of Print's output.
type printed struct{ value, comment string }

// printLines runs Print and splits its output by variable.
func printLines(t *testing.T, cfg Config) (map[string]printed, string) {
	t.Helper()
	var buf bytes.Buffer
	if err := cfg.Print(&buf); err != nil {
		t.Fatalf("Print: got error %v, want none", err)
	}
	out := make(map[string]printed)
	for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		assign, comment, ok := strings.Cut(line, "  # ")
		if !ok {
			t.Fatalf("line %q: got no comment, want one", line)
		}
		name, value, _ := strings.Cut(assign, "=")
		if _, dup := out[name]; dup {
			t.Errorf("%s: got it twice, want once", name)
		}
		out[name] = printed{strings.TrimSpace(value), comment}
	}
	return out, buf.String()
}

func TestPrint(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "lanegate.env")
	if err := os.WriteFile(file, []byte("LANEGATE_LOG_LEVEL=debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(LoadOptions{EnvFile: file, Environ: []string{
		"LANEGATE_ADMIN_TOKEN=s3cret-token",
		"LANEGATE_UPSTREAM_CPUS=4",
		"LANEGATE_EXPORT_MAX=2",
		"LANEGATE_TRUSTED_PROXIES=10.0.0.0/8",
	}})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	lines, raw := printLines(t, cfg)
	if strings.Contains(raw, "s3cret-token") {
		t.Errorf("Print output contains the admin token, want it redacted:\n%s", raw)
	}
	tests := []struct {
		name string
		want printed
	}{
		{"LANEGATE_ADMIN_TOKEN", printed{"<redacted>", "set"}},
		{"LANEGATE_LISTEN", printed{":8080", "default"}},
		{"LANEGATE_UPSTREAM", printed{"http://127.0.0.1:8000", "default"}},
		{"LANEGATE_TLS_CERT_FILE", printed{"''", "default (empty)"}},
		{"LANEGATE_TRUSTED_PROXIES", printed{"10.0.0.0/8", "set"}},
		{"LANEGATE_LOG_LEVEL", printed{"debug", "set in " + file}},
		{"LANEGATE_BUDGET", printed{"16", "derived from LANEGATE_DB_POOL_SIZE=20, LANEGATE_POOL_HEADROOM=20"}},
		{"LANEGATE_UPSTREAM_CPUS", printed{"4", "set"}},
		{"LANEGATE_LOGIN_MAX", printed{"4", "derived from LANEGATE_BUDGET=16, LANEGATE_UPSTREAM_CPUS=4"}},
		{"LANEGATE_LOGIN_RESERVED", printed{"2", "derived from LANEGATE_BUDGET=16, LANEGATE_LOGIN_MAX=4"}},
		{"LANEGATE_LOGIN_MAX_HOLD", printed{"30s", "default"}},
		{"LANEGATE_EXPORT_MAX", printed{"2", "set"}},
		{"LANEGATE_EXPORT_RESERVED", printed{"0", "default"}},
		{"LANEGATE_CORE_RESERVED", printed{"8", "derived from LANEGATE_BUDGET=16, LANEGATE_LOGIN_RESERVED=2, LANEGATE_EXPORT_RESERVED=0, LANEGATE_CORE_MAX=16"}},
		{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT", printed{"''", "default (empty)"}},
		{"LANEGATE_BYPASS_PATHS", printed{"/static/,/media/,/favicon.ico", "default"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := lines[tt.name]; got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	for _, v := range Variables() {
		if _, ok := lines[v.Name]; !ok {
			t.Errorf("%s: got no line, want one", v.Name)
		}
	}
}

func TestPrintUnsetSecretAndDefaultCPUs(t *testing.T) {
	cfg, err := Load(LoadOptions{})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	lines, _ := printLines(t, cfg)
	if got, want := lines["LANEGATE_ADMIN_TOKEN"], (printed{"''", "default (empty)"}); got != want {
		t.Errorf("admin token: got %+v, want %+v", got, want)
	}
	if got, want := lines["LANEGATE_UPSTREAM_CPUS"].comment, "default: CPUs of this machine"; got != want {
		t.Errorf("upstream cpus comment: got %q, want %q", got, want)
	}
}

// TestPrintRoundTrip loads Print's output back as an env file: the
// effective configuration must come out the same.
func TestPrintRoundTrip(t *testing.T) {
	cfg, err := Load(LoadOptions{Environ: []string{
		"LANEGATE_DB_POOL_SIZE=140",
		"LANEGATE_UPSTREAM_CPUS=8",
		"LANEGATE_TRUSTED_PROXIES=10.0.0.0/8,::1",
		"LANEGATE_EXPORT_PATHS=/reports/",
		"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=120s",
		"LANEGATE_LOGIN_RATE=2.5",
	}})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	var buf bytes.Buffer
	if err := cfg.Print(&buf); err != nil {
		t.Fatalf("Print: got error %v, want none", err)
	}
	file := filepath.Join(t.TempDir(), "printed.env")
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := Load(LoadOptions{EnvFile: file})
	if err != nil {
		t.Fatalf("Load of printed output: got error %v, want none\n%s", err, buf.String())
	}
	if got, want := again.Limits(), cfg.Limits(); got != want {
		t.Errorf("limits: got %+v, want %+v", got, want)
	}
	// Provenance differs (everything is "set in" the file the second
	// time); the values must not.
	a, _ := printLines(t, cfg)
	b, _ := printLines(t, again)
	for name, p := range a {
		if b[name].value != p.value {
			t.Errorf("%s: got %q after the round trip, want %q", name, b[name].value, p.value)
		}
	}
}

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{":8080", ":8080"},
		{"<redacted>", "<redacted>"},
		{"/path with space", "'/path with space'"},
		{"a#b", "'a#b'"},
		{"$HOME", "'$HOME'"},
		{"it's", `"it's"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := quote(tt.in); got != tt.want {
				t.Errorf("quote(%q): got %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestMarkdownTable(t *testing.T) {
	table := MarkdownTable()
	if !strings.HasPrefix(table, "| Variable | Default | On reload | Meaning |\n| --- | --- | --- | --- |\n") {
		t.Errorf("got table starting %q, want the header first", table[:min(len(table), 60)])
	}
	rows := strings.Split(strings.TrimSpace(table), "\n")
	if got, want := len(rows), len(Variables())+2; got != want {
		t.Errorf("got %d rows, want %d", got, want)
	}
	tests := []struct{ name, row string }{
		{"LANEGATE_LISTEN", "| `LANEGATE_LISTEN` | `:8080` | restart | "},
		{"LANEGATE_BUDGET", "| `LANEGATE_BUDGET` | pool - ceil(pool * headroom / 100), at least 1 (16 for a pool of 20) | live | "},
		{"LANEGATE_ADMIN_TOKEN", "| `LANEGATE_ADMIN_TOKEN` | (unset) | restart | "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(table, tt.row) {
				t.Errorf("got no row starting %q, want one", tt.row)
			}
		})
	}
	for _, v := range Variables() {
		if !strings.Contains(table, "| `"+v.Name+"` |") {
			t.Errorf("%s: got no row, want one", v.Name)
		}
	}
	if !strings.Contains(table, "Secret: never printed.") {
		t.Errorf("got no secret note, want the admin token marked secret")
	}
}
