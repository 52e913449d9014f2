package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnvFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "lanegate.env")
	content := `# A comment line.
LANEGATE_DB_POOL_SIZE=40   # an inline comment
  # an indented comment
LANEGATE_LOG_FORMAT=console
LANEGATE_LOG_LEVEL="debug"
export LANEGATE_UPSTREAM_CPUS=2
LANEGATE_BYPASS_PATHS='/static/,/media/'
DJANGO_SETTINGS_MODULE=app.settings

LANEGATE_LISTEN=:9000
`
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(LoadOptions{EnvFile: file, Environ: []string{
		"LANEGATE_LISTEN=:8081",    // the environment wins
		"LANEGATE_LOG_FORMAT=",     // even when empty: back to the default
		"DJANGO_SETTINGS_MODULE=x", // not ours: ignored
	}})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"pool from file", cfg.Admission.DBPoolSize, 40},
		{"budget derived from the file's pool", cfg.Limits().Budget, 32},
		{"quoted level from file", cfg.Log.Level, "debug"},
		{"exported cpus from file", *cfg.Admission.UpstreamCPUs, 2},
		{"single-quoted list from file", strings.Join(cfg.Routes.BypassPaths, ","), "/static/,/media/"},
		{"listen from environment", cfg.Server.Listen, ":8081"},
		{"empty environment value beats file", cfg.Log.Format, "json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
}

func TestEnvFileErrors(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.env")
	if err := os.WriteFile(typo, []byte("LANEGATE_BUDGT=10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(dir, "broken.env")
	if err := os.WriteFile(broken, []byte("LANEGATE_LISTEN=\"unterminated\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The parser quotes the text it trips on; a secret must not reach
	// the log (or /status, after a reload) that way.
	const secret = "s3cr3t-value-that-must-not-leak"
	leaky := filepath.Join(dir, "leaky.env")
	if err := os.WriteFile(leaky, []byte("LANEGATE_BUDGET=4\nLANEGATE_IDENTITY_SECRET=\""+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.env")
	if err := os.WriteFile(garbage, []byte("# a comment\n"+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spaced := filepath.Join(dir, "spaced.env")
	if err := os.WriteFile(spaced, []byte("LANEGATE IDENTITY_SECRET="+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.env")
	tests := []struct {
		name string
		file string
		want string
	}{
		{"missing file", missing, "reading env file " + missing + ": "},
		{"unparsable file", broken, "reading env file " + broken + ": line 1: unterminated quoted value"},
		{"typo in file", typo, "LANEGATE_BUDGT in " + typo + ": unknown variable (did you mean LANEGATE_BUDGET?)"},
		{"unterminated secret", leaky, "reading env file " + leaky + ": line 2: unterminated quoted value"},
		{"bare secret", garbage, "reading env file " + garbage + ": line 2: unexpected character"},
		{"space in a name", spaced, "reading env file " + spaced + `: "LANEGATE IDENTITY_SECRET" is not a variable name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(LoadOptions{EnvFile: tt.file})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one containing %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), secret[:8]) {
				t.Errorf("error repeats the file's secret: %v", err)
			}
		})
	}
}
