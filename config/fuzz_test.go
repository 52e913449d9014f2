package config

import (
	"strings"
	"testing"
)

// FuzzLoad feeds Load hostile environments: any name and value, built from
// the fuzzer's text as NAME=VALUE lines. Load must never panic; whatever it
// accepts must make limits the controller accepts, and an error must name
// at least one variable.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"LANEGATE_DB_POOL_SIZE=20",
		"LANEGATE_DB_POOL_SIZE=1\nLANEGATE_POOL_HEADROOM=99",
		"LANEGATE_BUDGET=4095\nLANEGATE_CORE_MAX=4095",
		"LANEGATE_LOGIN_MAX_HOLD=1h\nLANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=1s\nLANEGATE_BUDGET=30",
		"LANEGATE_SESSION_STORE=redis\nLANEGATE_IDENTITY_SECRET=k:0123456789abcdef0123456789abcdef",
		"LANEGATE_LOGIN_PATHS=/a/../b/,//x\nLANEGATE_UPSTREAM=ftp://x",
		"LANEGATE_TRUSTED_PROXIES=10.0.0.0/8,::1,nonsense",
		"LANEGATE_ANON_MAX=-1\nLANEGATE_LOGIN_RATE=NaN\nLANEGATE_LOGIN_BURST=0",
		"LANEGATE_LISTEN=:http\nLANEGATE_ADMIN_LISTEN=0.0.0.0:9090",
		"LANEGATE_CORE_QUEUE=99999999999999999999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		var environ []string
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, "=") {
				environ = append(environ, line)
			}
		}
		cfg, err := Load(LoadOptions{Environ: environ})
		if err != nil {
			if !strings.Contains(err.Error(), prefix) && !strings.Contains(err.Error(), "admission limits") {
				t.Fatalf("Load(%q) error names no variable: %v", environ, err)
			}
			return
		}
		if err := cfg.Limits().Validate(); err != nil {
			t.Fatalf("Load(%q) accepted limits the controller refuses: %v", environ, err)
		}
	})
}
