package config

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// TestDeployEnvFiles loads each shipped env file and pins the numbers its
// comments explain, so a change to the derivation or to a file that
// invalidates them fails here.
func TestDeployEnvFiles(t *testing.T) {
	devLoginMax := min(runtime.NumCPU(), 4) // development leaves CPUs to the host
	tests := []struct {
		file    string
		environ []string
		// Expected limits: budget, then per lane max, reserved, queue.
		budget              int
		login, core, export [3]int
		format, level       string
		queryWait           time.Duration
	}{
		{
			file:   "development.env",
			budget: 8,
			login:  [3]int{devLoginMax, 1, 64},
			core:   [3]int{8, 4, 64},
			export: [3]int{2, 0, 4},
			format: "console", level: "debug",
		},
		{
			file:   "staging.env",
			budget: 32,
			login:  [3]int{2, 2, 256},
			core:   [3]int{32, 16, 256},
			export: [3]int{8, 0, 16},
			format: "json", level: "info",
			queryWait: 120 * time.Second,
		},
		{
			file:   "production.env",
			budget: 112,
			login:  [3]int{8, 8, 896},
			core:   [3]int{112, 56, 896},
			export: [3]int{28, 0, 56},
			format: "json", level: "info",
			queryWait: 120 * time.Second,
		},
		{
			// Scraping the admin server from another host, as the file's
			// comment describes: the token comes from the real environment.
			file:    "production.env",
			environ: []string{"LANEGATE_ADMIN_LISTEN=0.0.0.0:9090", "LANEGATE_ADMIN_TOKEN=from-the-secret-store"},
			budget:  112,
			login:   [3]int{8, 8, 896},
			core:    [3]int{112, 56, 896},
			export:  [3]int{28, 0, 56},
			format:  "json", level: "info",
			queryWait: 120 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.file+" "+strings.Join(tt.environ, " "), func(t *testing.T) {
			cfg, err := Load(LoadOptions{EnvFile: "../deploy/env/" + tt.file, Environ: tt.environ})
			if err != nil {
				t.Fatalf("Load: got error %v, want none", err)
			}
			l := cfg.Limits()
			if err := l.Validate(); err != nil {
				t.Errorf("Validate: got %v, want nil", err)
			}
			if l.Budget != tt.budget {
				t.Errorf("budget: got %d, want %d", l.Budget, tt.budget)
			}
			for _, lane := range []struct {
				lane admission.Lane
				want [3]int
			}{{admission.Login, tt.login}, {admission.Core, tt.core}, {admission.Export, tt.export}} {
				ll := l.Lane[lane.lane]
				if got := [3]int{ll.Max, ll.Reserved, ll.Queue}; got != lane.want {
					t.Errorf("%s max, reserved, queue: got %v, want %v", lane.lane, got, lane.want)
				}
			}
			if cfg.Log.Format != tt.format || cfg.Log.Level != tt.level {
				t.Errorf("log: got %s/%s, want %s/%s", cfg.Log.Format, cfg.Log.Level, tt.format, tt.level)
			}
			var qw time.Duration
			if p := cfg.Admission.PgBouncerQueryWaitTimeout; p != nil {
				qw = *p
			}
			if qw != tt.queryWait {
				t.Errorf("query wait timeout: got %s, want %s", qw, tt.queryWait)
			}
			if cfg.Admission.Mode != ModeEnforce {
				t.Errorf("mode: got %s, want %s", cfg.Admission.Mode, ModeEnforce)
			}
		})
	}
}

func TestProductionAdminNeedsToken(t *testing.T) {
	_, err := Load(LoadOptions{
		EnvFile: "../deploy/env/production.env",
		Environ: []string{"LANEGATE_ADMIN_LISTEN=0.0.0.0:9090"},
	})
	if want := "LANEGATE_ADMIN_TOKEN is required"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got error %v, want one containing %q", err, want)
	}
}
