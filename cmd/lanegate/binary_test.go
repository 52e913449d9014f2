package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lanegate/lanegate/metrics"
)

// binary is lanegate built with its default env file moved to a
// temporary directory, as -ldflags=-X=main.defaultEnvFile=PATH moves it.
type binary struct {
	path, defaultEnv string
}

func buildBinary(t *testing.T) binary {
	t.Helper()
	if testing.Short() {
		t.Skip("builds lanegate: not with -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build lanegate with")
	}
	dir := t.TempDir()
	b := binary{path: filepath.Join(dir, "lanegate"), defaultEnv: filepath.Join(dir, "etc", "lanegate.env")}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goTool, "build", "-o", b.path, "-ldflags=-X=main.defaultEnvFile="+b.defaultEnv, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Mkdir(filepath.Dir(b.defaultEnv), 0o755); err != nil {
		t.Fatal(err)
	}
	return b
}

// command is the binary run with args in exactly env, nothing of the
// test's own environment.
func (b binary) command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.path, args...)
	cmd.Env = append([]string{}, env...) // not nil: nil would pass the test's
	return cmd
}

// run runs the binary to its end and returns what it printed and its
// exit status.
func (b binary) run(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := b.command(testContext(t), env, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("%v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// TestBinary runs the built lanegate as a container runtime runs the
// image: settings in the default env file, overridden by the
// environment, exit statuses as documented, the health check reading
// the same file as the server, and the build on /metrics.
func TestBinary(t *testing.T) {
	b := buildBinary(t)
	def := b.defaultEnv
	other := filepath.Join(t.TempDir(), "other.env")
	writeFile(t, other, "LANEGATE_BUDGET=5\n")
	missing := filepath.Join(t.TempDir(), "missing.env")

	t.Run("no default file", func(t *testing.T) {
		stdout, stderr, code := b.run(t, nil, "config")
		if vals := printed(t, stdout); code != 0 || vals["LANEGATE_BUDGET"] != "16" || strings.Contains(stdout, "set in ") {
			t.Errorf("exit %d, LANEGATE_BUDGET=%s; want 0, the default 16 and nothing set; stderr:\n%s\nstdout:\n%s", code, vals["LANEGATE_BUDGET"], stderr, stdout)
		}
	})

	writeFile(t, def, "LANEGATE_BUDGET=7\n")
	for _, tt := range []struct {
		name   string
		env    []string
		args   []string
		code   int
		budget string
		from   string
	}{
		{"default file read", nil, []string{"config"}, 0, "7", def},
		{"environment wins over it", []string{"LANEGATE_BUDGET=9"}, []string{"config"}, 0, "9", ""},
		{"--env-file instead of it", nil, []string{"--env-file", other, "config"}, 0, "5", other},
		{"--env-file '' reads none", nil, []string{"--env-file", "", "config"}, 0, "16", ""},
		{"missing --env-file", nil, []string{"--env-file", missing, "config"}, 1, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := b.run(t, tt.env, tt.args...)
			if code != tt.code {
				t.Fatalf("exit status %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			if tt.code != 0 {
				return
			}
			vals := printed(t, stdout)
			if vals["LANEGATE_BUDGET"] != tt.budget {
				t.Errorf("LANEGATE_BUDGET=%s, want %s", vals["LANEGATE_BUDGET"], tt.budget)
			}
			if tt.from != "" && !strings.Contains(stdout, "set in "+tt.from) || tt.from == "" && strings.Contains(stdout, "set in ") {
				t.Errorf("want values set in %q only:\n%s", tt.from, stdout)
			}
		})
	}

	t.Run("config --strict", func(t *testing.T) {
		writeFile(t, def, strings.Join(warningEnv, "\n")+"\n")
		if _, stderr, code := b.run(t, nil, "config"); code != 0 || !strings.Contains(stderr, "lanegate: warning: configuration: ") {
			t.Errorf("config: exit %d, stderr %q; want 0 and the warning", code, stderr)
		}
		if _, stderr, code := b.run(t, nil, "config", "--strict"); code != 2 || !strings.Contains(stderr, "lanegate: warning: configuration: ") {
			t.Errorf("config --strict: exit %d, stderr %q; want 2 and the warning", code, stderr)
		}
		if _, stderr, code := b.run(t, nil, "--env-file", "", "config", "--strict"); code != 0 || stderr != "" {
			t.Errorf("config --strict without the file: exit %d, stderr %q; want 0 and nothing", code, stderr)
		}
	})

	t.Run("serve, healthcheck and build info", func(t *testing.T) {
		ctx := testContext(t)
		up := newUpstream(t)
		admin := freePort(t) // the healthcheck must know it beforehand
		settings := fmt.Sprintf("LANEGATE_LISTEN=127.0.0.1:0\nLANEGATE_ADMIN_LISTEN=%s\nLANEGATE_UPSTREAM=%s\nLANEGATE_SHUTDOWN_TIMEOUT=5s\n", admin, up.URL)
		writeFile(t, def, settings+"LANEGATE_BUDGET=4\n")
		stderr := newLogBuffer()
		serve := b.command(ctx, nil) // serve is the default command
		serve.Stderr = stderr
		if err := serve.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		var waitErr error // set before exited is closed
		go func() {
			waitErr = serve.Wait()
			close(exited)
		}()
		t.Cleanup(func() {
			serve.Process.Kill() // harmless once it has exited
			<-exited
		})
		stderr.waitFor(ctx, t, 0, `"msg":"lanegate started"`)
		if want := fmt.Sprintf(`"env_file":%q`, def); !strings.Contains(stderr.String(), want) {
			t.Errorf("the start is logged without %s:\n%s", want, stderr)
		}

		// As the image's HEALTHCHECK runs it: no flag, the same file.
		if stdout, errOut, code := b.run(t, nil, "healthcheck"); code != 0 || !strings.HasPrefix(stdout, "ok") {
			t.Errorf("healthcheck: exit %d, stdout %q, stderr %q; want 0 and ok", code, stdout, errOut)
		}

		version, _, _ := b.run(t, nil, "version")
		r := do(ctx, newClient(t), "GET", "http://"+admin+"/metrics", "")
		if r.err != nil || r.status != 200 {
			t.Fatalf("GET /metrics: %d %v", r.status, r.err)
		}
		m := regexp.MustCompile(`(?m)^lanegate_build_info\{goversion="([^"]*)",revision="([^"]*)",version="([^"]*)"\} 1$`).FindStringSubmatch(r.body)
		if m == nil {
			t.Fatalf("/metrics has no lanegate_build_info:\n%s", r.body)
		}
		if got := (metrics.Build{GoVersion: m[1], Revision: m[2], Version: m[3]}).String(); got != strings.TrimSpace(version) {
			t.Errorf("lanegate_build_info says %q, lanegate version %q", got, version)
		}

		// A reload re-reads the default file, as it would --env-file.
		writeFile(t, def, settings+"LANEGATE_BUDGET=6\n")
		mark := stderr.Len()
		if err := serve.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		stderr.waitFor(ctx, t, mark, "configuration reloaded")
		var st struct{ Budget int }
		if r := do(ctx, newClient(t), "GET", "http://"+admin+"/status", ""); json.Unmarshal([]byte(r.body), &st) != nil || st.Budget != 6 {
			t.Errorf("/status after the reload: %d %q, want budget 6", r.status, r.body)
		}

		if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		recv(ctx, t, exited, "lanegate to exit")
		if waitErr != nil {
			t.Errorf("serve after SIGTERM: %v; stderr:\n%s", waitErr, stderr)
		}
		if _, _, code := b.run(t, nil, "healthcheck"); code != 1 {
			t.Errorf("healthcheck with lanegate stopped: exit %d, want 1", code)
		}
	})
}
