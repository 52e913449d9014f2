package deploy

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/joho/godotenv"
	"gopkg.in/yaml.v3"

	"github.com/lanegate/lanegate/config"
)

// requireTools names the switch that turns a missing tool into a failure:
// CI installs them, so there the checks must run, not skip.
const requireTools = "TEST_REQUIRE_DEPLOY_TOOLS"

// tool returns the path of an external checker, or skips the test saying
// which binary is absent and what goes unchecked; with TEST_REQUIRE_DEPLOY_TOOLS=1
// it fails instead, for a tool .ci/run installs (debian names its
// package). A tool that is present and fails always fails the test.
func tool(t *testing.T, name, debian, unchecked string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	install := "Debian's " + debian + " package"
	if debian == "" {
		install = "not a Debian package"
	}
	msg := name + " is absent (" + install + "), so nothing checks " + unchecked
	if debian != "" && os.Getenv(requireTools) == "1" {
		t.Fatal(msg + " (" + requireTools + "=1)")
	}
	t.Skip(msg)
	return ""
}

// run runs a checker and returns its combined output, failing the test
// when it exits non-zero.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// variables is every variable lanegate reads, from config's own list.
func variables() map[string]config.Variable {
	out := make(map[string]config.Variable)
	for _, v := range config.Variables() {
		out[v.Name] = v
	}
	return out
}

// readEnvFile reads a dotenv file the way lanegate's --env-file does.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	env, err := godotenv.Read(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return env
}

// secretsFile is the file a deployment reads its secrets from, or, when
// that is not in the repository (it must not be), its committed example.
func secretsFile(t *testing.T, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return path
	}
	if _, err := os.Stat(path + ".example"); err != nil {
		t.Fatalf("neither %s nor %s.example exists", path, path)
	}
	return path + ".example"
}

// load loads lanegate's configuration from env as its environment, with
// envFile under it as --env-file does (the environment wins), exactly as
// lanegate starts.
func load(t *testing.T, envFile string, env map[string]string) config.Config {
	t.Helper()
	var environ []string
	for _, k := range slices.Sorted(maps.Keys(env)) {
		environ = append(environ, k+"="+env[k])
	}
	cfg, err := config.Load(config.LoadOptions{EnvFile: envFile, Environ: environ})
	if err != nil {
		t.Fatalf("lanegate refuses this configuration (env file %q):\n%v", envFile, err)
	}
	return cfg
}

// allInterfaces reports whether a listen address is on every interface
// (":8080", "0.0.0.0:8080", "[::]:8080"), as a listener in a container
// must be to be reached from outside it.
func allInterfaces(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}

// port is the port of a listen address such as :9090 or 0.0.0.0:8080.
func port(t *testing.T, listen string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("listen address %q: %v", listen, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("listen address %q: port %q", listen, p)
	}
	return n
}

// yamlDocs decodes every document of a YAML stream.
func yamlDocs(t *testing.T, name string, r io.Reader) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(r)
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// yamlFile decodes the one document of a YAML file.
func yamlFile(t *testing.T, path string) map[string]any {
	t.Helper()
	b := readFile(t, path)
	docs := yamlDocs(t, path, bytes.NewReader(b))
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(docs))
	}
	return docs[0]
}

// get walks a decoded YAML or JSON value by map keys and list indexes,
// returning nil where the path does not lead.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// str is get for a string; "" when absent. Numbers are written as YAML
// would read them back.
func str(v any, path ...any) string {
	switch x := get(v, path...).(type) {
	case string:
		return x
	case int:
		return strconv.Itoa(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return ""
}

// list is get for a list; nil when absent.
func list(v any, path ...any) []any {
	l, _ := get(v, path...).([]any)
	return l
}

// deployFiles lists the files under deploy/ that deployments use: all but
// the Django app (whose LANEGATE_* names, such as LANEGATE_IDENTITY_SKEW,
// are Django settings, not lanegate's variables) and these tests.
func deployFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == "django" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
