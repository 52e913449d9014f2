package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// varName matches a lanegate variable's name, not a wildcard such as
// LANEGATE_* in prose.
var varName = regexp.MustCompile(`\bLANEGATE_[A-Z0-9]+(?:_[A-Z0-9]+)*\b`)

// unknownNames returns the LANEGATE_* names in text that lanegate does not
// read, each once, in order.
func unknownNames(text string, known map[string]bool) []string {
	var out []string
	for _, name := range varName.FindAllString(text, -1) {
		if !known[name] && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

func knownNames() map[string]bool {
	known := make(map[string]bool)
	for name := range variables() {
		known[name] = true
	}
	return known
}

// TestDeployFilesNameOnlyLanegateVariables reads every deployment file,
// comments included: a variable misspelt or since renamed would make
// lanegate refuse to start (it rejects unknown LANEGATE_* variables), or,
// in a comment, send an operator after a setting that does not exist.
func TestDeployFilesNameOnlyLanegateVariables(t *testing.T) {
	known := knownNames()
	if len(known) < 50 {
		t.Fatalf("config.Variables lists %d variables; the list looks wrong", len(known))
	}
	seen := make(map[string]bool)
	for _, path := range deployFiles(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range varName.FindAllString(string(b), -1) {
			seen[name] = true
		}
		if bad := unknownNames(string(b), known); len(bad) > 0 {
			t.Errorf("%s names variables lanegate does not read: %s", path, strings.Join(bad, ", "))
		}
	}
	// The stacks do set these; finding none would mean the walk missed
	// the files.
	for _, name := range []string{"LANEGATE_FLEET", "LANEGATE_INSTANCE_ID", "LANEGATE_TICKET_SECRET", "LANEGATE_ADMIN_TOKEN", "LANEGATE_SHUTDOWN_TIMEOUT"} {
		if !seen[name] {
			t.Errorf("no deployment file names %s", name)
		}
	}
}

func TestUnknownNamesFindsMisspellings(t *testing.T) {
	known := knownNames()
	text := "LANEGATE_BUDGET=4\n# see LANEGATE_* and LANEGATE_BUDGTE\nLANEGATE_FLEET_LEASES=3s LANEGATE_BUDGTE"
	got := unknownNames(text, known)
	if want := []string{"LANEGATE_BUDGTE", "LANEGATE_FLEET_LEASES"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestEnvFiles checks every env file under deploy/, the examples of
// secret files included: each parses as lanegate's --env-file parser reads
// it, and sets only variables lanegate reads.
func TestEnvFiles(t *testing.T) {
	known := knownNames()
	var n int
	for _, path := range deployFiles(t) {
		base := filepath.Base(path)
		if !strings.HasSuffix(base, ".env") && !strings.HasSuffix(base, ".env.example") {
			continue
		}
		n++
		env := readEnvFile(t, path)
		if len(env) == 0 {
			t.Errorf("%s sets nothing", path)
		}
		for k := range env {
			if !known[k] {
				t.Errorf("%s sets %s, which lanegate does not read", path, k)
			}
		}
	}
	if n < 8 {
		t.Errorf("found %d env files under deploy/, want the environments', compose's and k8s's", n)
	}
}

// TestEveryYAMLParses decodes every YAML file under deploy/, each of its
// documents.
func TestEveryYAMLParses(t *testing.T) {
	n := 0
	for _, path := range deployFiles(t) {
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			continue
		}
		n++
		b := readFile(t, path)
		if docs := yamlDocs(t, path, bytes.NewReader(b)); len(docs) == 0 {
			t.Errorf("%s: no document", path)
		}
	}
	if n < 11 {
		t.Errorf("%d YAML files under deploy/, want compose's, k8s's and monitoring's", n)
	}
}
