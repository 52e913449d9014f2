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
	missing := filepath.Join(dir, "missing.env")
	tests := []struct {
		name string
		file string
		want string
	}{
		{"missing file", missing, "reading env file " + missing + ": "},
		{"unparsable file", broken, "reading env file " + broken + ": unterminated quoted value"},
		{"typo in file", typo, "LANEGATE_BUDGT in " + typo + ": unknown variable (did you mean LANEGATE_BUDGET?)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(LoadOptions{EnvFile: tt.file})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}
