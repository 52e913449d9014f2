package deploy

import (
	"bufio"
	"encoding/json"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/config"
)

// image describes the container image the Dockerfile builds, as far as
// the deployments depend on it.
type image struct {
	// env is the final stage's ENV, which a container's environment
	// overrides and which overrides any env file.
	env        map[string]string
	user       string
	entrypoint []string
	// healthcheck is HEALTHCHECK's command (exec form), healthOpts its
	// options (interval, timeout, ...).
	healthcheck []string
	healthOpts  map[string]string
	expose      []int
	// envFile is the repository's file the image ships where lanegate
	// reads its default env file (defaultEnvFile); "" when it ships none.
	envFile string
	// lanegateEnv are the LANEGATE_* variables any stage sets with ENV,
	// each as "stage: NAME".
	lanegateEnv []string
}

// defaultEnvFile is the env file lanegate reads when given no
// --env-file, if it exists: cmd/lanegate's defaultEnvFile.
func defaultEnvFile(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^var defaultEnvFile = "([^"]+)"$`).FindSubmatch(readFile(t, "../cmd/lanegate/main.go"))
	if m == nil {
		t.Fatal(`cmd/lanegate/main.go: no var defaultEnvFile = "..."; the tests read the default env file's path there`)
	}
	return string(m[1])
}

// dockerfile reads the repository's Dockerfile: every stage's ENV, and
// the rest of the final stage.
func dockerfile(t *testing.T) image {
	t.Helper()
	b := readFile(t, "../Dockerfile")
	// Join continuation lines, then read the instructions.
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	var img image
	var lanegateEnv []string
	stage := 0
	def := defaultEnvFile(t)
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			stage++
			img = image{env: map[string]string{}, healthOpts: map[string]string{}}
		case "ENV":
			for _, kv := range strings.Fields(rest) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Fatalf("Dockerfile: ENV %q: only the KEY=VALUE form is understood here", rest)
				}
				img.env[k] = v
				if strings.HasPrefix(k, "LANEGATE_") {
					lanegateEnv = append(lanegateEnv, "stage "+strconv.Itoa(stage)+": "+k)
				}
			}
		case "USER":
			img.user = rest
		case "ENTRYPOINT":
			img.entrypoint = execForm(t, "ENTRYPOINT", rest)
		case "EXPOSE":
			for _, p := range strings.Fields(rest) {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					t.Fatalf("Dockerfile: EXPOSE %s: %v", p, err)
				}
				img.expose = append(img.expose, n)
			}
		case "HEALTHCHECK":
			for strings.HasPrefix(rest, "--") {
				opt, after, _ := strings.Cut(rest, " ")
				k, v, _ := strings.Cut(strings.TrimPrefix(opt, "--"), "=")
				img.healthOpts[k] = v
				rest = strings.TrimSpace(after)
			}
			cmd, args, _ := strings.Cut(rest, " ")
			if cmd != "CMD" {
				t.Fatalf("Dockerfile: HEALTHCHECK %s: want HEALTHCHECK [OPTIONS] CMD [...]", rest)
			}
			img.healthcheck = execForm(t, "HEALTHCHECK CMD", args)
		case "COPY":
			f := strings.Fields(rest)
			if len(f) > 0 && strings.HasPrefix(f[0], "--from=") {
				continue // from another stage, not from the repository
			}
			if len(f) < 2 || strings.HasPrefix(f[0], "--") {
				t.Fatalf("Dockerfile: COPY %s: only COPY SRC... DST is understood here", rest)
			}
			for _, src := range f[:len(f)-1] {
				dst := f[len(f)-1]
				if strings.HasSuffix(dst, "/") {
					dst += path.Base(src)
				}
				if dst == def {
					img.envFile = "../" + src
				}
			}
		}
	}
	img.lanegateEnv = lanegateEnv
	if len(img.entrypoint) == 0 {
		t.Fatal("Dockerfile: no ENTRYPOINT in the final stage")
	}
	return img
}

// execForm decodes an instruction's exec (JSON) form.
func execForm(t *testing.T, instr, s string) []string {
	t.Helper()
	var out []string
	if err := json.Unmarshal([]byte(s), &out); err != nil || len(out) == 0 {
		t.Fatalf("Dockerfile: %s %s: want the exec (JSON) form: %v", instr, s, err)
	}
	return out
}

// healthTimeout is how long lanegate healthcheck waits for /readyz:
// cmd/lanegate's healthTimeout.
func healthTimeout(t *testing.T) time.Duration {
	t.Helper()
	m := regexp.MustCompile(`(?m)^const healthTimeout = (\d+) \* time\.Second$`).FindSubmatch(readFile(t, "../cmd/lanegate/cli.go"))
	if m == nil {
		t.Fatal("cmd/lanegate/cli.go: no const healthTimeout = N * time.Second")
	}
	n, _ := strconv.Atoi(string(m[1]))
	return time.Duration(n) * time.Second
}

// TestDockerfile checks the image's contract: its settings are a file
// lanegate reads by default, which a mounted file replaces and the
// environment overrides, never ENV, which would silently win over both
// a mounted file and --env-file; and its health check is lanegate's
// own, reading those same settings.
func TestDockerfile(t *testing.T) {
	img := dockerfile(t)
	for _, e := range img.lanegateEnv {
		t.Errorf("Dockerfile: ENV sets %s: it would win over every env file, the one mounted at %s included; ship it in %s instead",
			e, defaultEnvFile(t), strings.TrimPrefix(img.envFile, "../"))
	}
	if want := []string{"/usr/local/bin/lanegate"}; !slices.Equal(img.entrypoint, want) {
		t.Errorf("ENTRYPOINT %v, want %v, where the deployment files run it", img.entrypoint, want)
	}
	// No --env-file: the check reads the default file, as serve does
	// when run with no --env-file.
	if want := append(slices.Clone(img.entrypoint), "healthcheck"); !slices.Equal(img.healthcheck, want) {
		t.Errorf("HEALTHCHECK CMD %v, want %v", img.healthcheck, want)
	}
	for _, opt := range []string{"interval", "timeout", "start-period"} {
		if _, err := time.ParseDuration(img.healthOpts[opt]); err != nil {
			t.Errorf("HEALTHCHECK --%s=%q: %v", opt, img.healthOpts[opt], err)
		}
	}
	// Docker's timeout kills the check; lanegate's own gives up first
	// and says why.
	if d, _ := time.ParseDuration(img.healthOpts["timeout"]); d <= healthTimeout(t) {
		t.Errorf("HEALTHCHECK --timeout=%s is not above lanegate healthcheck's own %s", d, healthTimeout(t))
	}
	if strings.HasPrefix(img.user, "root") || img.user == "" || img.user == "0" {
		t.Errorf("USER %q: want a non-root user", img.user)
	}

	if img.envFile == "" {
		t.Fatalf("Dockerfile: nothing is copied to %s, the env file lanegate reads by default", defaultEnvFile(t))
	}
	file := readEnvFile(t, img.envFile)
	for _, k := range []string{"LANEGATE_LISTEN", "LANEGATE_ADMIN_LISTEN"} {
		if file[k] == "" {
			t.Errorf("%s does not set %s: the image would listen on lanegate's host default", img.envFile, k)
		}
	}
	// The admin port listens beyond loopback, so a token is required:
	// lanegate refuses to start without one.
	if _, err := config.Load(config.LoadOptions{EnvFile: img.envFile}); err == nil || !strings.Contains(err.Error(), "LANEGATE_ADMIN_TOKEN is required") {
		t.Errorf("%s loads without LANEGATE_ADMIN_TOKEN (error %v): want it required", img.envFile, err)
	}
	cfg := load(t, img.envFile, map[string]string{"LANEGATE_ADMIN_TOKEN": "a-token-passed-at-run-time"})
	for _, l := range []struct{ name, addr string }{
		{"LANEGATE_LISTEN", cfg.Server.Listen},
		{"LANEGATE_ADMIN_LISTEN", cfg.Admin.Listen},
	} {
		if !allInterfaces(l.addr) {
			t.Errorf("%s=%s in %s: a container must listen on all interfaces", l.name, l.addr, img.envFile)
		}
		if p := port(t, l.addr); !slices.Contains(img.expose, p) {
			t.Errorf("%s=%s: port %d is not among EXPOSE %v", l.name, l.addr, p, img.expose)
		}
	}
}

// TestDockerfileSeesEnv makes sure the parser finds what it must reject:
// ENV in any stage, continued lines included.
func TestDockerfileSeesEnv(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(dir+"/deploy", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"Dockerfile", "cmd/lanegate/main.go", "cmd/lanegate/cli.go"} {
		if err := os.MkdirAll(path.Dir(dir+"/"+name), 0o755); err != nil {
			t.Fatal(err)
		}
		b := readFile(t, "../"+name)
		if name == "Dockerfile" {
			b = []byte(strings.Replace(string(b), "EXPOSE", "ENV A=1 \\\n    LANEGATE_LISTEN=:8080\nEXPOSE", 1))
		}
		if err := os.WriteFile(dir+"/"+name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir + "/deploy")
	img := dockerfile(t)
	if want := []string{"stage 2: LANEGATE_LISTEN"}; !slices.Equal(img.lanegateEnv, want) {
		t.Errorf("got %v, want %v", img.lanegateEnv, want)
	}
}
