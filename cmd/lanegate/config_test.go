package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lanegate/lanegate/config"
)

// runOnce runs a command that is expected to return by itself.
func runOnce(t *testing.T, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx := testContext(t)
	out, errOut := newLogBuffer(), newLogBuffer()
	a := app{
		stdout:  out,
		stderr:  errOut,
		environ: env,
		started: func(listenAddrs) { t.Errorf("%q: started serving, want it to return", args) },
	}
	err = a.run(ctx, args)
	return out.String(), errOut.String(), err
}

// printed parses the config command's output: variable name to value.
func printed(t *testing.T, out string) map[string]string {
	t.Helper()
	vals := make(map[string]string)
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		assign, _, ok := strings.Cut(line, "  # ")
		name, value, ok2 := strings.Cut(assign, "=")
		if !ok || !ok2 {
			t.Fatalf("line %q: want NAME=value  # comment", line)
		}
		if _, dup := vals[name]; dup {
			t.Errorf("%s: printed twice", name)
		}
		vals[name] = strings.TrimSpace(value)
	}
	return vals
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestConfigPrintsEveryVariable(t *testing.T) {
	env := []string{"LANEGATE_BUDGET=12", "LANEGATE_LOG_FORMAT=console"}
	var secrets []string
	for _, v := range config.Variables() {
		if v.Secret {
			// Long enough for the keyrings' 32-byte minimum.
			s := "s3cret-" + strings.ToLower(v.Name) + "-0123456789abcdef"
			secrets = append(secrets, s)
			value := s
			if v.Name == "LANEGATE_PGBOUNCER_URL" {
				// A console that refuses at once: config says it could
				// not size from it, without its password.
				value = "postgres://stats:" + s + "@127.0.0.1:1/pgbouncer"
			}
			env = append(env, v.Name+"="+value)
		}
	}
	if len(secrets) == 0 {
		t.Fatal("no secret variable: want at least LANEGATE_ADMIN_TOKEN")
	}
	stdout, stderr, err := runOnce(t, env, "config")
	if err != nil {
		t.Fatalf("config: got error %v, want none; stderr:\n%s", err, stderr)
	}
	if want := "lanegate: warning: cannot size from PgBouncer's pool at start; starting on the static configuration (budget 12): reading PgBouncer's console: "; !strings.HasPrefix(stderr, want) {
		t.Errorf("config: got stderr %q, want only the warning of the console's refusal, as serve's", stderr)
	}
	for _, s := range secrets {
		if strings.Contains(stderr, s) {
			t.Errorf("stderr contains the secret %q:\n%s", s, stderr)
		}
	}
	vals := printed(t, stdout)
	for _, v := range config.Variables() {
		got, ok := vals[v.Name]
		switch {
		case !ok:
			t.Errorf("%s: not printed", v.Name)
		case v.Secret && got != "<redacted>":
			t.Errorf("%s: printed %q, want <redacted>", v.Name, got)
		}
	}
	if len(vals) != len(config.Variables()) {
		t.Errorf("printed %d variables, want %d", len(vals), len(config.Variables()))
	}
	for _, s := range secrets {
		if strings.Contains(stdout, s) {
			t.Errorf("output contains the secret %q:\n%s", s, stdout)
		}
	}
	for name, want := range map[string]string{
		"LANEGATE_BUDGET":     "12",
		"LANEGATE_LOG_FORMAT": "console",
		"LANEGATE_LISTEN":     ":8080",
	} {
		if vals[name] != want {
			t.Errorf("%s: printed %q, want %q", name, vals[name], want)
		}
	}
}

func TestConfigMarkdown(t *testing.T) {
	want := config.MarkdownTable()
	for _, args := range [][]string{{"config", "--markdown"}, {"--markdown", "config"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			// The reference table documents the variables; it does not
			// depend on (or validate) the environment.
			stdout, stderr, err := runOnce(t, []string{"LANEGATE_BUDGET=abc"}, args...)
			if err != nil {
				t.Fatalf("got error %v, want none; stderr:\n%s", err, stderr)
			}
			if stdout != want {
				t.Errorf("got stdout\n%s\nwant config.MarkdownTable()\n%s", stdout, want)
			}
		})
	}
}

func TestCommandLineErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.env")
	tests := []struct {
		name    string
		env     []string
		args    []string
		stderrs []string // each must appear on stderr
	}{
		{
			name:    "reservation over the budget",
			env:     []string{"LANEGATE_LOGIN_RESERVED=30", "LANEGATE_BUDGET=20"},
			args:    []string{"config"},
			stderrs: []string{"invalid configuration", "LANEGATE_LOGIN_RESERVED"},
		},
		{
			name:    "unparsable value",
			env:     []string{"LANEGATE_SHUTDOWN_TIMEOUT=30"},
			args:    []string{"config"},
			stderrs: []string{"LANEGATE_SHUTDOWN_TIMEOUT", "unit"},
		},
		{
			name:    "unknown command",
			args:    []string{"frobnicate"},
			stderrs: []string{`unknown command "frobnicate"`, "usage: lanegate"},
		},
		{
			name:    "unknown flag",
			args:    []string{"--no-such-flag"},
			stderrs: []string{"no-such-flag", "usage: lanegate"},
		},
		{
			name:    "unknown flag after the command",
			args:    []string{"config", "--no-such-flag"},
			stderrs: []string{"no-such-flag", "usage: lanegate"},
		},
		{
			name:    "extra argument",
			args:    []string{"config", "extra"},
			stderrs: []string{"usage: lanegate"},
		},
		{
			name:    "flag without its value",
			args:    []string{"--env-file"},
			stderrs: []string{"env-file", "usage: lanegate"},
		},
		{
			name:    "missing env file with config",
			args:    []string{"--env-file", missing, "config"},
			stderrs: []string{missing},
		},
		{
			name:    "missing env file when serving",
			args:    []string{"--env-file", missing},
			stderrs: []string{missing},
		},
		{
			name:    "missing env file with healthcheck",
			args:    []string{"--env-file", missing, "healthcheck"},
			stderrs: []string{missing},
		},
		{
			name:    "missing env file with doctor",
			args:    []string{"doctor", "--env-file", missing},
			stderrs: []string{missing},
		},
		{
			// It would look like a check that passed.
			name:    "--strict when serving",
			args:    []string{"--strict", "serve"},
			stderrs: []string{"--strict applies to the config command"},
		},
		{
			name:    "--strict with healthcheck",
			args:    []string{"healthcheck", "--strict"},
			stderrs: []string{"--strict applies to the config command"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runOnce(t, tt.env, tt.args...)
			if !errors.Is(err, errReported) {
				t.Errorf("got error %v, want errReported (explained on stderr)", err)
			}
			for _, s := range tt.stderrs {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr does not mention %q:\n%s", s, stderr)
				}
			}
			if stdout != "" {
				t.Errorf("got stdout %q, want none", stdout)
			}
		})
	}
}

func TestConfigEnvFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "lanegate.env")
	writeFile(t, file, "LANEGATE_LOG_LEVEL=debug\nLANEGATE_DB_POOL_SIZE=40\nLANEGATE_BUDGET=7\n")
	env := []string{"LANEGATE_BUDGET=9"} // the environment wins over the file
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"flag before the command", []string{"--env-file", file, "config"}},
		{"flag after the command", []string{"config", "--env-file", file}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runOnce(t, env, tt.args...)
			if err != nil {
				t.Fatalf("got error %v, want none; stderr:\n%s", err, stderr)
			}
			vals := printed(t, stdout)
			for name, want := range map[string]string{
				"LANEGATE_LOG_LEVEL":    "debug",
				"LANEGATE_DB_POOL_SIZE": "40",
				"LANEGATE_BUDGET":       "9",
			} {
				if vals[name] != want {
					t.Errorf("%s: printed %q, want %q", name, vals[name], want)
				}
			}
			if !strings.Contains(stdout, "set in "+file) {
				t.Errorf("output does not say which values came from %s:\n%s", file, stdout)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"config", "-h"}, {"--env-file", "x.env", "-help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			// Asking for help is not a failure: usage, then exit 0.
			_, stderr, err := runOnce(t, nil, args...)
			if err != nil {
				t.Errorf("got error %v, want none", err)
			}
			if !strings.Contains(stderr, "usage: lanegate") || !strings.Contains(stderr, "-env-file") {
				t.Errorf("stderr does not show the usage and flags:\n%s", stderr)
			}
			for _, want := range []string{"doctor", "healthcheck", "LANEGATE_DB_POOL_SIZE", "config --markdown", "--strict", "-strict", defaultEnvFile, "--env-file ''"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("usage does not mention %s:\n%s", want, stderr)
				}
			}
		})
	}
}

// help and version are commands, answered on stdout with exit status 0.
func TestHelpAndVersionCommands(t *testing.T) {
	stdout, _, err := runOnce(t, nil, "help")
	if err != nil || !strings.Contains(stdout, "usage: lanegate") || !strings.Contains(stdout, "LANEGATE_PGBOUNCER_URL") {
		t.Errorf("help: error %v, stdout:\n%s", err, stdout)
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		stdout, _, err := runOnce(t, nil, args...)
		if err != nil || !strings.HasPrefix(stdout, "lanegate ") || !strings.Contains(stdout, "go1.") {
			t.Errorf("%v: error %v, stdout %q", args, err, stdout)
		}
	}
}

// healthcheck exits 0 while the admin listener says ready, and 1 once it
// does not (draining, or nothing listening).
func TestHealthcheck(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	in := start(ctx, t, environ(up.URL, "LANEGATE_ADMIN_TOKEN=health-token-0123456789"))
	env := environ(up.URL, "LANEGATE_ADMIN_LISTEN="+in.addrs.Admin, "LANEGATE_ADMIN_TOKEN=health-token-0123456789")
	stdout, stderr, err := runOnce(t, env, "healthcheck")
	if err != nil || !strings.HasPrefix(stdout, "ok") {
		t.Fatalf("healthcheck of a ready lanegate: error %v, stdout %q, stderr %q", err, stdout, stderr)
	}
	in.cancel()
	if err := in.wait(ctx, t); err != nil {
		t.Fatalf("lanegate: %v", err)
	}
	if _, stderr, err := runOnce(t, env, "healthcheck"); err == nil || !strings.Contains(stderr, "healthcheck") {
		t.Fatalf("healthcheck with nothing listening: error %v, stderr %q; want a failure", err, stderr)
	}
}

func TestDialable(t *testing.T) {
	for in, want := range map[string]string{
		":9090": "127.0.0.1:9090", "0.0.0.0:9090": "127.0.0.1:9090", "[::]:9090": "127.0.0.1:9090",
		"127.0.0.1:9091": "127.0.0.1:9091", "[::1]:9090": "[::1]:9090", "admin.internal:9090": "admin.internal:9090",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}

// warningEnv is a valid configuration that serve warns about at start: a
// bound on buffered bodies below one body's size.
var warningEnv = []string{"LANEGATE_BUFFER_BODY_BYTES=65536", "LANEGATE_BUFFER_BODY_TOTAL_BYTES=1000"}

// config prints the warnings serve would log at start, on stderr; with
// --strict they make its exit status 2, and without any it is 0.
func TestConfigStrict(t *testing.T) {
	cfg, err := config.Load(config.LoadOptions{Environ: warningEnv})
	if err != nil {
		t.Fatal(err)
	}
	warnings := startWarnings(cfg, nil)
	if len(warnings) == 0 {
		t.Fatalf("%v: no warning; the test needs one", warningEnv)
	}
	for _, tt := range []struct {
		name     string
		env      []string
		args     []string
		warnings bool
		code     int
	}{
		{"clean", nil, []string{"config"}, false, 0},
		{"clean, strict", nil, []string{"config", "--strict"}, false, 0},
		{"warnings", warningEnv, []string{"config"}, true, 0},
		{"warnings, strict", warningEnv, []string{"config", "--strict"}, true, 2},
		{"warnings, strict before the command", warningEnv, []string{"--strict", "config"}, true, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runOnce(t, tt.env, tt.args...)
			if got := exitCode(err); got != tt.code {
				t.Errorf("exit status %d (error %v), want %d; stderr:\n%s", got, err, tt.code, stderr)
			}
			if err != nil && !errors.Is(err, errReported) {
				t.Errorf("error %v: want it explained on stderr (errReported)", err)
			}
			// The configuration is printed whatever the verdict.
			if vals := printed(t, stdout); vals["LANEGATE_LISTEN"] != ":8080" {
				t.Errorf("stdout does not print the configuration:\n%s", stdout)
			}
			var want strings.Builder
			if tt.warnings {
				for _, w := range warnings {
					want.WriteString("lanegate: warning: " + w.String() + "\n")
				}
			}
			if stderr != want.String() {
				t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want.String())
			}
		})
	}
}

// serve logs at start the very warnings config prints.
func TestServeLogsConfigWarnings(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	env := environ(up.URL, warningEnv...)
	_, printedWarnings, err := runOnce(t, env, "config")
	if err != nil || printedWarnings == "" {
		t.Fatalf("config: error %v, stderr %q; want warnings", err, printedWarnings)
	}
	in := start(ctx, t, env)
	in.cancel()
	if err := in.wait(ctx, t); err != nil {
		t.Fatal(err)
	}
	var logged []string
	for line := range strings.SplitSeq(in.stderr.String(), "\n") {
		var entry struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Level == "warn" {
			logged = append(logged, "lanegate: warning: "+entry.Msg+"\n")
		}
	}
	if got := strings.Join(logged, ""); got != printedWarnings {
		t.Errorf("serve warned:\n%s\nconfig printed:\n%s", got, printedWarnings)
	}
}

func TestExitCode(t *testing.T) {
	for err, want := range map[error]int{
		nil:                                 0,
		errReported:                         1,
		errors.New("listen: busy"):          1,
		errStrict:                           2,
		fmt.Errorf("config: %w", errStrict): 2,
	} {
		if got := exitCode(err); got != want {
			t.Errorf("exitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

// runWithDefault runs a command of an app whose default env file is
// defaultFile, as the binary's is /etc/lanegate/lanegate.env.
func runWithDefault(t *testing.T, defaultFile string, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	out, errOut := newLogBuffer(), newLogBuffer()
	a := app{
		stdout:         out,
		stderr:         errOut,
		environ:        env,
		defaultEnvFile: defaultFile,
		started:        func(listenAddrs) { t.Errorf("%q: started serving, want it to return", args) },
	}
	err = a.run(testContext(t), args)
	return out.String(), errOut.String(), err
}

// The default env file, when it exists, is read exactly as --env-file
// would read it, under the environment; when it does not, nothing is.
// --env-file names another file instead, or, empty, none.
func TestDefaultEnvFile(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "lanegate.env")
	writeFile(t, def, "LANEGATE_BUDGET=7\nLANEGATE_LOG_LEVEL=debug\n")
	other := filepath.Join(dir, "other.env")
	writeFile(t, other, "LANEGATE_BUDGET=5\n")
	bad := filepath.Join(dir, "bad.env")
	writeFile(t, bad, "LANEGATE_BUDGTE=7\n")
	absent := filepath.Join(dir, "absent.env")
	for _, tt := range []struct {
		name       string
		defaultEnv string
		env        []string
		args       []string
		budget     string // "" when it must fail
		level      string
		from       string // the file the output says values came from, if any
		stderr     string
	}{
		{name: "default read", defaultEnv: def, args: []string{"config"}, budget: "7", level: "debug", from: def},
		{name: "environment wins", defaultEnv: def, env: []string{"LANEGATE_BUDGET=9"}, args: []string{"config"}, budget: "9", level: "debug", from: def},
		{name: "default absent", defaultEnv: absent, args: []string{"config"}, budget: "16", level: "info"},
		{name: "--env-file instead", defaultEnv: def, args: []string{"--env-file", other, "config"}, budget: "5", level: "info", from: other},
		{name: "--env-file after the command", defaultEnv: def, args: []string{"config", "--env-file", other}, budget: "5", level: "info", from: other},
		{name: "--env-file '' reads none", defaultEnv: def, args: []string{"--env-file", "", "config"}, budget: "16", level: "info"},
		{name: "--env-file= reads none", defaultEnv: def, args: []string{"--env-file=", "config"}, budget: "16", level: "info"},
		{name: "explicit default path", defaultEnv: def, args: []string{"--env-file", def, "config"}, budget: "7", level: "debug", from: def},
		{name: "invalid default fails as --env-file does", defaultEnv: bad, args: []string{"config"}, stderr: "LANEGATE_BUDGTE in " + bad},
		{name: "missing --env-file fails even with a default", defaultEnv: def, args: []string{"--env-file", absent, "config"}, stderr: absent},
		{name: "doctor reads the default", defaultEnv: bad, args: []string{"doctor"}, stderr: "LANEGATE_BUDGTE in " + bad},
		{name: "healthcheck reads the default", defaultEnv: bad, args: []string{"healthcheck"}, stderr: "LANEGATE_BUDGTE in " + bad},
		{name: "serve reads the default", defaultEnv: bad, args: []string{"serve"}, stderr: "LANEGATE_BUDGTE in " + bad},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runWithDefault(t, tt.defaultEnv, tt.env, tt.args...)
			if tt.budget == "" {
				if !errors.Is(err, errReported) || !strings.Contains(stderr, tt.stderr) {
					t.Errorf("error %v, stderr:\n%s\nwant a failure naming %q", err, stderr, tt.stderr)
				}
				return
			}
			if err != nil {
				t.Fatalf("error %v; stderr:\n%s", err, stderr)
			}
			vals := printed(t, stdout)
			if vals["LANEGATE_BUDGET"] != tt.budget || vals["LANEGATE_LOG_LEVEL"] != tt.level {
				t.Errorf("LANEGATE_BUDGET=%s LANEGATE_LOG_LEVEL=%s, want %s and %s", vals["LANEGATE_BUDGET"], vals["LANEGATE_LOG_LEVEL"], tt.budget, tt.level)
			}
			for _, f := range []string{def, other} {
				if says := strings.Contains(stdout, "set in "+f); says != (f == tt.from) {
					t.Errorf("output says values came from %s: %v, want %v:\n%s", f, says, f == tt.from, stdout)
				}
			}
		})
	}
}
