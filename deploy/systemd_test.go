package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const unitPath = "systemd/lanegate.service"

// unit is a systemd unit file: each section's keys, with every value of a
// key given more than once, in order.
type unit map[string]map[string][]string

func readUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot read %q", path, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// last is a key's value in force: the last one given.
func (u unit) last(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// execPaths are the absolute programs of a unit's Exec*= lines, without
// systemd's prefixes (-, @, :, +, !).
func (u unit) execPaths() []string {
	var out []string
	for k, vs := range u["Service"] {
		if !strings.HasPrefix(k, "Exec") {
			continue
		}
		for _, v := range vs {
			prog := strings.TrimLeft(strings.Fields(v)[0], "-@:+!")
			if strings.HasPrefix(prog, "/") && !slices.Contains(out, prog) {
				out = append(out, prog)
			}
		}
	}
	return out
}

// TestSystemdUnitVerifies has systemd-analyze verify the unit, and rate
// its hardening. It checks the unit under a private root (--root) holding
// the system's own units and a stand-in at each program path the unit
// runs, since lanegate is not installed where tests run; every warning it
// prints (an unknown or misspelt key, a bad value, which systemd ignores
// with exit status 0) fails the test.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "systemd", "the systemd unit")
	root := t.TempDir()
	for _, dir := range []string{"etc/systemd/system", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The targets and slices the unit is ordered against and installed
	// into (network-online.target, multi-user.target, system.slice).
	run(t, "", "cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/"))
	b, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/systemd/system/lanegate.service"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	progs := readUnit(t, unitPath).execPaths()
	if len(progs) < 2 {
		t.Fatalf("the unit runs %v: want ExecStart and ExecReload", progs)
	}
	for _, prog := range progs {
		p := filepath.Join(root, prog)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(analyze, "verify", "--root="+root, "lanegate.service")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Exposure 1.4 ("OK") when written; systemd counts it in tenths. A
	// hardening line dropped or mistyped raises it past 2.0.
	cmd = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", "--root="+root, "lanegate.service")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-analyze security: exposure above 2.0 (%v):\n%s", err, out)
	}
}

// TestSystemdUnitMatchesLanegate checks what systemd cannot know: that the
// unit starts lanegate the way its reload and drain work.
func TestSystemdUnitMatchesLanegate(t *testing.T) {
	u := readUnit(t, unitPath)
	start := strings.Fields(u.last("Service", "ExecStart"))
	if len(start) == 0 || start[0] != "/usr/local/bin/lanegate" {
		t.Fatalf("ExecStart=%v: want /usr/local/bin/lanegate, where the install steps and the image put it", start)
	}
	// SIGHUP re-reads --env-file only; settings passed in the environment
	// (EnvironmentFile=) stay as they were at start. So the settings file
	// must be the --env-file, and never an EnvironmentFile too, where it
	// would pin every value until a restart.
	i := slices.Index(start, "--env-file")
	if i < 0 || i+1 >= len(start) {
		t.Fatalf("ExecStart=%v: want --env-file FILE, so that systemctl reload re-reads the settings", start)
	}
	envFile := start[i+1]
	// The default path, so that lanegate config and doctor, run by hand
	// on the machine, read what the service reads.
	if def := defaultEnvFile(t); envFile != def {
		t.Errorf("ExecStart=%v reads %s: want lanegate's default env file, %s", start, envFile, def)
	}
	for _, ef := range u["Service"]["EnvironmentFile"] {
		if strings.TrimPrefix(ef, "-") == envFile {
			t.Errorf("EnvironmentFile=%s is also the --env-file: its values would win over the file and survive every reload", ef)
		}
	}
	if reload := u.last("Service", "ExecReload"); !strings.Contains(reload, "-HUP") || !strings.Contains(reload, "$MAINPID") {
		t.Errorf("ExecReload=%q: want a SIGHUP to $MAINPID, lanegate's reload", reload)
	}
	// The stop timeout outlasts the drain of every shipped environment.
	stop, err := time.ParseDuration(u.last("Service", "TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	envs, _ := filepath.Glob("env/*.env")
	if len(envs) == 0 {
		t.Fatal("no env files in deploy/env")
	}
	for _, f := range envs {
		// Production's file is written for a loopback admin port; the
		// secrets would come from EnvironmentFile.
		cfg := load(t, f, nil)
		if drain := cfg.Server.ShutdownTimeout; stop <= drain+5*time.Second {
			t.Errorf("TimeoutStopSec=%s does not outlast %s's LANEGATE_SHUTDOWN_TIMEOUT=%s with room to close: SIGKILL would cut the drain", stop, f, drain)
		}
	}
	if s := u.last("Service", "KillSignal"); s != "" && s != "SIGTERM" {
		t.Errorf("KillSignal=%s: lanegate drains on SIGTERM", s)
	}
	for key, want := range map[string]string{
		"Restart":         "on-failure",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"DynamicUser":     "yes",
	} {
		if got := u.last("Service", key); got != want {
			t.Errorf("%s=%q, want %q", key, got, want)
		}
	}
	if got := u.last("Install", "WantedBy"); got != "multi-user.target" {
		t.Errorf("WantedBy=%q, want multi-user.target", got)
	}
}
