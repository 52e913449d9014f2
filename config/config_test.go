package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/lanegate/lanegate/admission"
)

// environ turns a map into the "KEY=VALUE" form Load takes.
func environ(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in      string
		want    Mode
		wantErr bool
	}{
		{"enforce", ModeEnforce, false},
		{"shadow", ModeShadow, false},
		{"off", ModeOff, false},
		{"", "", true},
		{"Enforce", "", true},
		{"enforcing", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMode(tt.in)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("ParseMode(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load(LoadOptions{Environ: []string{"LANEGATE_UPSTREAM_CPUS=4"}})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"Server.Listen", cfg.Server.Listen, ":8080"},
		{"Server.TLSCertFile", cfg.Server.TLSCertFile, ""},
		{"Server.TrustedProxies", cfg.Server.TrustedProxies, []netip.Prefix(nil)},
		{"Server.ReadHeaderTimeout", cfg.Server.ReadHeaderTimeout, 10 * time.Second},
		{"Server.IdleTimeout", cfg.Server.IdleTimeout, 120 * time.Second},
		{"Server.MaxHeaderBytes", cfg.Server.MaxHeaderBytes, 32768},
		{"Server.MaxBodyBytes", cfg.Server.MaxBodyBytes, int64(64 << 20)},
		{"Server.BufferBodyBytes", cfg.Server.BufferBodyBytes, int64(64 << 10)},
		{"Server.BufferBodyTotalBytes", cfg.Server.BufferBodyTotalBytes, int64(64 << 20)},
		{"Server.ShutdownTimeout", cfg.Server.ShutdownTimeout, 30 * time.Second},
		{"Upstream.URL", cfg.Upstream.URL.String(), "http://127.0.0.1:8000"},
		{"Upstream.DialTimeout", cfg.Upstream.DialTimeout, 2 * time.Second},
		{"Upstream.ResponseHeaderTimeout", cfg.Upstream.ResponseHeaderTimeout, 60 * time.Second},
		{"Upstream.IdleTimeout", cfg.Upstream.IdleTimeout, time.Second},
		{"Admin.Listen", cfg.Admin.Listen, "127.0.0.1:9090"},
		{"Admin.Token", cfg.Admin.Token, ""},
		{"Admission.Mode", cfg.Admission.Mode, ModeEnforce},
		{"Admission.DBPoolSize", cfg.Admission.DBPoolSize, 20},
		{"Admission.PoolHeadroom", cfg.Admission.PoolHeadroom, 20},
		{"Admission.Budget", cfg.Admission.Budget, (*int)(nil)},
		{"Admission.Login.Max", cfg.Admission.Login.Max, (*int)(nil)},
		{"Admission.Login.QueueTimeout", cfg.Admission.Login.QueueTimeout, 30 * time.Second},
		{"Admission.Core.QueueTimeout", cfg.Admission.Core.QueueTimeout, 5 * time.Second},
		{"Admission.Export.QueueTimeout", cfg.Admission.Export.QueueTimeout, 30 * time.Second},
		{"Admission.LoginRate", cfg.Admission.LoginRate, 10.0},
		{"Admission.LoginBurst", cfg.Admission.LoginBurst, 20},
		{"Admission.LoginPerClientRate", cfg.Admission.LoginPerClientRate, 0.0},
		{"Admission.LoginPerClientBurst", cfg.Admission.LoginPerClientBurst, 5},
		{"Admission.LoginClientsMax", cfg.Admission.LoginClientsMax, 10000},
		{"Admission.PgBouncerQueryWaitTimeout", cfg.Admission.PgBouncerQueryWaitTimeout, (*time.Duration)(nil)},
		{"Routes.LoginPaths", cfg.Routes.LoginPaths, []string{"/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"}},
		{"Routes.ExportPaths", cfg.Routes.ExportPaths, []string(nil)},
		{"Routes.BypassPaths", cfg.Routes.BypassPaths, []string{"/static/", "/media/", "/favicon.ico"}},
		{"Log.Format", cfg.Log.Format, "json"},
		{"Log.Level", cfg.Log.Level, "info"},
		{"Log.Access", cfg.Log.Access, true},
		{"Limits().Budget", cfg.Limits().Budget, 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
}

func TestLoadValues(t *testing.T) {
	cfg, err := Load(LoadOptions{Environ: environ(map[string]string{
		"LANEGATE_TRUSTED_PROXIES":              " 10.1.2.3/8, 192.168.0.7 ,::1,",
		"LANEGATE_BUDGET":                       "12",
		"LANEGATE_LOGIN_MAX":                    "3",
		"LANEGATE_ADMISSION":                    "shadow",
		"LANEGATE_UPSTREAM":                     "https://app.internal:8443/",
		"LANEGATE_EXPORT_PATHS":                 "/reports/,/admin/export/",
		"LANEGATE_LOGIN_RATE":                   "2.5",
		"LANEGATE_ACCESS_LOG":                   "false",
		"LANEGATE_MAX_BODY_BYTES":               "0",
		"LANEGATE_CORE_QUEUE_TIMEOUT":           "750ms",
		"LANEGATE_ADMIN_LISTEN":                 "[::1]:9091",
		"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT": "0",
		"NOT_OURS":                              "ignored",
	})})
	// 0 without a unit is a valid duration in Go; it means "no check".
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"TrustedProxies", cfg.Server.TrustedProxies, []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("192.168.0.7/32"),
			netip.MustParsePrefix("::1/128"),
		}},
		{"Budget", *cfg.Admission.Budget, 12},
		{"Limits().Budget", cfg.Limits().Budget, 12},
		{"Login.Max", *cfg.Admission.Login.Max, 3},
		{"Mode", cfg.Admission.Mode, ModeShadow},
		{"Upstream", cfg.Upstream.URL.String(), "https://app.internal:8443/"},
		{"ExportPaths", cfg.Routes.ExportPaths, []string{"/reports/", "/admin/export/"}},
		{"LoginRate", cfg.Limits().LoginRate.Rate, 2.5},
		{"Access", cfg.Log.Access, false},
		{"MaxBodyBytes", cfg.Server.MaxBodyBytes, int64(0)},
		{"Core.QueueTimeout", cfg.Limits().Lane[admission.Core].QueueTimeout, 750 * time.Millisecond},
		{"PgBouncerQueryWaitTimeout", *cfg.Admission.PgBouncerQueryWaitTimeout, time.Duration(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(cert, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		// want are substrings of the error; each must be there.
		want []string
		// not are substrings that must not be there: problems that
		// follow from one already reported.
		not []string
	}{
		{
			name: "budget not an integer",
			env:  map[string]string{"LANEGATE_BUDGET": "abc", "LANEGATE_LOGIN_RESERVED": "30"},
			want: []string{`LANEGATE_BUDGET="abc": not an integer`},
			not:  []string{"exceeds", "between"},
		},
		{
			name: "integer out of range",
			env:  map[string]string{"LANEGATE_LOGIN_QUEUE": "99999999999999999999"},
			want: []string{`LANEGATE_LOGIN_QUEUE="99999999999999999999": out of range`},
		},
		{
			name: "unknown session store",
			env:  map[string]string{"LANEGATE_SESSION_STORE": "memcached"},
			want: []string{`LANEGATE_SESSION_STORE="memcached": want off, memory or redis`},
		},
		{
			name: "session store without secret",
			env:  map[string]string{"LANEGATE_SESSION_STORE": "memory"},
			want: []string{"LANEGATE_IDENTITY_SECRET is required because LANEGATE_SESSION_STORE=memory"},
		},
		{
			name: "short identity secret is named but not shown",
			env:  map[string]string{"LANEGATE_SESSION_STORE": "memory", "LANEGATE_IDENTITY_SECRET": "k1:hunter2hunter2"},
			want: []string{"LANEGATE_IDENTITY_SECRET: secret 1 (key id \"k1\") has 14 bytes: want at least 32"},
			not:  []string{"hunter2"},
		},
		{
			name: "redis store without URL",
			env:  map[string]string{"LANEGATE_SESSION_STORE": "redis", "LANEGATE_IDENTITY_SECRET": strings.Repeat("s", 32)},
			want: []string{"LANEGATE_REDIS_URL is required because LANEGATE_SESSION_STORE=redis"},
		},
		{
			name: "session numbers",
			env: map[string]string{"LANEGATE_SESSION_STORE": "memory", "LANEGATE_IDENTITY_SECRET": strings.Repeat("s", 32),
				"LANEGATE_SESSION_TTL": "0s", "LANEGATE_SESSION_MAX_ENTRIES": "0", "LANEGATE_SESSION_COALESCE_WAIT": "-1s", "LANEGATE_SESSION_COOKIE": "a b"},
			want: []string{"LANEGATE_SESSION_TTL=0s: must be positive", "LANEGATE_SESSION_MAX_ENTRIES=0: must be at least 1",
				"LANEGATE_SESSION_COALESCE_WAIT=-1s: must not be negative", `LANEGATE_SESSION_COOKIE="a b": not a cookie name`},
		},
		{
			name: "anonymous cap above core max",
			env:  map[string]string{"LANEGATE_ANON_MAX": "100", "LANEGATE_CORE_MAX": "10"},
			want: []string{"LANEGATE_ANON_MAX=100 exceeds LANEGATE_CORE_MAX=10"},
		},
		{
			name: "login URL to another host",
			env:  map[string]string{"LANEGATE_LOGIN_URL": "//evil.example/login"},
			want: []string{`LANEGATE_LOGIN_URL="//evil.example/login": must not start with "//"`},
		},
		{
			name: "login-required rule not clean",
			env:  map[string]string{"LANEGATE_LOGIN_REQUIRED_PATHS": "/app/../admin/"},
			want: []string{`LANEGATE_LOGIN_REQUIRED_PATHS="/app/../admin/"`},
		},
		{
			name: "pool size zero",
			env:  map[string]string{"LANEGATE_DB_POOL_SIZE": "0"},
			want: []string{"LANEGATE_DB_POOL_SIZE=0: must be between 1 and 4095"},
		},
		{
			name: "pool size too big",
			env:  map[string]string{"LANEGATE_DB_POOL_SIZE": "40000"},
			want: []string{"LANEGATE_DB_POOL_SIZE=40000: must be between 1 and 4095"},
		},
		{
			name: "bad pool hides derived problems",
			env:  map[string]string{"LANEGATE_DB_POOL_SIZE": "-5", "LANEGATE_LOGIN_RESERVED": "3"},
			want: []string{"LANEGATE_DB_POOL_SIZE=-5: must be between 1 and 4095"},
			not:  []string{"LANEGATE_LOGIN_RESERVED"},
		},
		{
			name: "login max 0",
			env:  map[string]string{"LANEGATE_LOGIN_MAX": "0"},
			want: []string{"LANEGATE_LOGIN_MAX=0: must be at least 1: with 0, every login request would be refused"},
		},
		{
			name: "core max 0",
			env:  map[string]string{"LANEGATE_CORE_MAX": "0", "LANEGATE_EXPORT_MAX": "0"},
			want: []string{"LANEGATE_CORE_MAX=0: must be at least 1"},
			not:  []string{"LANEGATE_EXPORT_MAX"},
		},
		{
			name: "headroom 100",
			env:  map[string]string{"LANEGATE_POOL_HEADROOM": "100"},
			want: []string{"LANEGATE_POOL_HEADROOM=100: must be a percentage from 0 to 99"},
		},
		{
			name: "headroom negative",
			env:  map[string]string{"LANEGATE_POOL_HEADROOM": "-1"},
			want: []string{"LANEGATE_POOL_HEADROOM=-1: must be a percentage from 0 to 99"},
		},
		{
			name: "budget zero",
			env:  map[string]string{"LANEGATE_BUDGET": "0"},
			want: []string{"LANEGATE_BUDGET=0: must be between 1 and 4095"},
			not:  []string{"exceeds"},
		},
		{
			name: "upstream cpus zero",
			env:  map[string]string{"LANEGATE_UPSTREAM_CPUS": "0"},
			want: []string{"LANEGATE_UPSTREAM_CPUS=0: must be at least 1"},
		},
		{
			name: "reserved exceeds set budget",
			env:  map[string]string{"LANEGATE_BUDGET": "20", "LANEGATE_LOGIN_RESERVED": "30"},
			want: []string{"LANEGATE_LOGIN_RESERVED=30 exceeds LANEGATE_BUDGET=20\n"},
			not:  []string{"reservations", "exceeds LANEGATE_LOGIN_MAX"},
		},
		{
			name: "reserved exceeds derived budget",
			env:  map[string]string{"LANEGATE_LOGIN_RESERVED": "30"},
			want: []string{"LANEGATE_LOGIN_RESERVED=30 exceeds LANEGATE_BUDGET=16 (derived from LANEGATE_DB_POOL_SIZE=20, LANEGATE_POOL_HEADROOM=20)"},
		},
		{
			name: "reserved exceeds set max",
			env:  map[string]string{"LANEGATE_LOGIN_MAX": "2", "LANEGATE_LOGIN_RESERVED": "3"},
			want: []string{"LANEGATE_LOGIN_RESERVED=3 exceeds LANEGATE_LOGIN_MAX=2"},
		},
		{
			name: "reserved exceeds derived max",
			env:  map[string]string{"LANEGATE_EXPORT_RESERVED": "5"},
			want: []string{"LANEGATE_EXPORT_RESERVED=5 exceeds LANEGATE_EXPORT_MAX=4 (derived from LANEGATE_BUDGET=16)"},
		},
		{
			name: "max exceeds budget",
			env:  map[string]string{"LANEGATE_CORE_MAX": "17"},
			want: []string{"LANEGATE_CORE_MAX=17 exceeds LANEGATE_BUDGET=16 (derived from LANEGATE_DB_POOL_SIZE=20, LANEGATE_POOL_HEADROOM=20)"},
		},
		{
			name: "negative lane values",
			env:  map[string]string{"LANEGATE_EXPORT_QUEUE": "-1", "LANEGATE_LOGIN_RESERVED": "-2", "LANEGATE_CORE_MAX": "-3"},
			want: []string{
				"LANEGATE_EXPORT_QUEUE=-1: must not be negative",
				"LANEGATE_LOGIN_RESERVED=-2: must not be negative",
				"LANEGATE_CORE_MAX=-3: must not be negative",
			},
			not: []string{"exceeds"},
		},
		{
			name: "queue too long",
			env:  map[string]string{"LANEGATE_CORE_QUEUE": "65536"},
			want: []string{"LANEGATE_CORE_QUEUE=65536: must be at most 65535"},
		},
		{
			name: "queues together too long",
			env:  map[string]string{"LANEGATE_CORE_QUEUE": "40000", "LANEGATE_LOGIN_QUEUE": "30000"},
			want: []string{"queues sum to more than lanegate can hold", "LANEGATE_LOGIN_QUEUE", "LANEGATE_CORE_QUEUE", "LANEGATE_EXPORT_QUEUE"},
		},
		{
			name: "reservations sum past budget",
			env: map[string]string{
				"LANEGATE_UPSTREAM_CPUS":   "8",
				"LANEGATE_LOGIN_RESERVED":  "6",
				"LANEGATE_CORE_RESERVED":   "6",
				"LANEGATE_EXPORT_MAX":      "6",
				"LANEGATE_EXPORT_RESERVED": "6",
			},
			want: []string{"reservations exceed the budget: LANEGATE_LOGIN_RESERVED=6 + LANEGATE_CORE_RESERVED=6 + LANEGATE_EXPORT_RESERVED=6 = 18, more than LANEGATE_BUDGET=16 (derived from"},
		},
		{
			name: "reservations sum past budget with core derived",
			env: map[string]string{
				"LANEGATE_BUDGET":          "8",
				"LANEGATE_UPSTREAM_CPUS":   "4",
				"LANEGATE_LOGIN_RESERVED":  "4",
				"LANEGATE_EXPORT_MAX":      "5",
				"LANEGATE_EXPORT_RESERVED": "5",
			},
			want: []string{"reservations exceed the budget: LANEGATE_LOGIN_RESERVED=4 + LANEGATE_CORE_RESERVED=0 (derived) + LANEGATE_EXPORT_RESERVED=5 = 9, more than LANEGATE_BUDGET=8"},
		},
		{
			name: "queue timeout zero",
			env:  map[string]string{"LANEGATE_CORE_QUEUE_TIMEOUT": "0s"},
			want: []string{"LANEGATE_CORE_QUEUE_TIMEOUT=0s: must be positive"},
		},
		{
			name: "server durations not positive",
			env: map[string]string{
				"LANEGATE_READ_HEADER_TIMEOUT":              "0s",
				"LANEGATE_IDLE_TIMEOUT":                     "-1s",
				"LANEGATE_SHUTDOWN_TIMEOUT":                 "0",
				"LANEGATE_UPSTREAM_DIAL_TIMEOUT":            "0ms",
				"LANEGATE_UPSTREAM_RESPONSE_HEADER_TIMEOUT": "-5m",
			},
			want: []string{
				"LANEGATE_READ_HEADER_TIMEOUT=0s: must be positive",
				"LANEGATE_IDLE_TIMEOUT=-1s: must be positive",
				"LANEGATE_SHUTDOWN_TIMEOUT=0s: must be positive",
				"LANEGATE_UPSTREAM_DIAL_TIMEOUT=0s: must be positive",
				"LANEGATE_UPSTREAM_RESPONSE_HEADER_TIMEOUT=-5m0s: must be positive",
			},
		},
		{
			name: "duration without unit",
			env:  map[string]string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT": "120"},
			want: []string{`LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT="120": a duration needs a unit, e.g. 120s`},
		},
		{
			name: "duration garbage",
			env:  map[string]string{"LANEGATE_LOGIN_MAX_HOLD": "soon"},
			want: []string{`LANEGATE_LOGIN_MAX_HOLD="soon": not a duration`},
		},
		{
			name: "byte limits",
			env: map[string]string{
				"LANEGATE_MAX_HEADER_BYTES":        "0",
				"LANEGATE_MAX_BODY_BYTES":          "-1",
				"LANEGATE_BUFFER_BODY_TOTAL_BYTES": "-1",
			},
			want: []string{
				"LANEGATE_MAX_HEADER_BYTES=0: must be at least 1",
				"LANEGATE_MAX_BODY_BYTES=-1: must not be negative",
				"LANEGATE_BUFFER_BODY_TOTAL_BYTES=-1: must not be negative (0 means no bound)",
			},
		},
		{
			name: "unknown mode",
			env:  map[string]string{"LANEGATE_ADMISSION": "enforcing"},
			want: []string{`LANEGATE_ADMISSION="enforcing": not an admission mode (want enforce, shadow or off)`},
		},
		{
			name: "unknown log format and level",
			env:  map[string]string{"LANEGATE_LOG_FORMAT": "text", "LANEGATE_LOG_LEVEL": "verbose"},
			want: []string{
				`LANEGATE_LOG_FORMAT="text": want json or console`,
				`LANEGATE_LOG_LEVEL="verbose": want debug, info, warn or error`,
			},
		},
		{
			name: "bad boolean",
			env:  map[string]string{"LANEGATE_ACCESS_LOG": "yes"},
			want: []string{`LANEGATE_ACCESS_LOG="yes": not a boolean`},
		},
		{
			name: "rate negative",
			env:  map[string]string{"LANEGATE_LOGIN_RATE": "-1", "LANEGATE_LOGIN_PER_CLIENT_RATE": "-0.5"},
			want: []string{
				"LANEGATE_LOGIN_RATE=-1: must not be negative",
				"LANEGATE_LOGIN_PER_CLIENT_RATE=-0.5: must not be negative",
			},
		},
		{
			name: "rate not a number",
			env:  map[string]string{"LANEGATE_LOGIN_RATE": "NaN"},
			want: []string{`LANEGATE_LOGIN_RATE="NaN": not a number`},
		},
		{
			name: "burst below one with rate set",
			env:  map[string]string{"LANEGATE_LOGIN_BURST": "0"},
			want: []string{"LANEGATE_LOGIN_BURST=0: must be at least 1 because LANEGATE_LOGIN_RATE=10 (default) is not 0"},
		},
		{
			name: "per-client burst below one with per-client rate set",
			env:  map[string]string{"LANEGATE_LOGIN_PER_CLIENT_RATE": "1", "LANEGATE_LOGIN_PER_CLIENT_BURST": "0"},
			want: []string{"LANEGATE_LOGIN_PER_CLIENT_BURST=0: must be at least 1 because LANEGATE_LOGIN_PER_CLIENT_RATE=1 is not 0"},
		},
		{
			name: "clients max zero with per-client rate set",
			env:  map[string]string{"LANEGATE_LOGIN_PER_CLIENT_RATE": "1", "LANEGATE_LOGIN_CLIENTS_MAX": "0"},
			want: []string{"LANEGATE_LOGIN_CLIENTS_MAX=0: must be at least 1 because LANEGATE_LOGIN_PER_CLIENT_RATE=1 is not 0"},
		},
		{
			name: "clients max negative",
			env:  map[string]string{"LANEGATE_LOGIN_CLIENTS_MAX": "-1"},
			want: []string{"LANEGATE_LOGIN_CLIENTS_MAX=-1: must not be negative"},
		},
		{
			name: "pgbouncer timeout negative",
			env:  map[string]string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT": "-1s"},
			want: []string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=-1s: must not be negative"},
		},
		{
			name: "paths must start with a slash",
			env:  map[string]string{"LANEGATE_LOGIN_PATHS": "/ok/,accounts/login/", "LANEGATE_BYPASS_PATHS": "static"},
			want: []string{
				`LANEGATE_LOGIN_PATHS="/ok/,accounts/login/": "accounts/login/" does not start with "/"`,
				`LANEGATE_BYPASS_PATHS="static": "static" does not start with "/"`,
			},
		},
		{
			name: "paths must be clean and have no query",
			env:  map[string]string{"LANEGATE_EXPORT_PATHS": "/reports//x/,/a/../b,/export?all=1,/fine/"},
			want: []string{`LANEGATE_EXPORT_PATHS="/reports//x/,/a/../b,/export?all=1,/fine/": ` +
				`"/reports//x/" is not clean: request paths are cleaned before matching, write "/reports/x/"; ` +
				`"/a/../b" is not clean: request paths are cleaned before matching, write "/b"; ` +
				`"/export?all=1" has a "?": rules match the path, not the query`},
		},
		{
			name: "listen not host:port",
			env:  map[string]string{"LANEGATE_LISTEN": "8080"},
			want: []string{`LANEGATE_LISTEN="8080": not a host:port address`},
		},
		{
			name: "listen port not a number",
			env:  map[string]string{"LANEGATE_LISTEN": ":http"},
			want: []string{`LANEGATE_LISTEN=":http": port "http" is not a number from 0 to 65535`},
		},
		{
			name: "admin on every interface needs a token",
			env:  map[string]string{"LANEGATE_ADMIN_LISTEN": "0.0.0.0:9090"},
			want: []string{`LANEGATE_ADMIN_TOKEN is required because LANEGATE_ADMIN_LISTEN="0.0.0.0:9090" is not a loopback address`},
		},
		{
			name: "admin with empty host needs a token",
			env:  map[string]string{"LANEGATE_ADMIN_LISTEN": ":9090"},
			want: []string{`LANEGATE_ADMIN_TOKEN is required because LANEGATE_ADMIN_LISTEN=":9090" is not a loopback address`},
		},
		{
			name: "admin on a hostname needs a token",
			env:  map[string]string{"LANEGATE_ADMIN_LISTEN": "admin.internal:9090"},
			want: []string{"LANEGATE_ADMIN_TOKEN is required"},
		},
		{
			name: "admin on the proxy's address",
			env:  map[string]string{"LANEGATE_LISTEN": "127.0.0.1:8080", "LANEGATE_ADMIN_LISTEN": "127.0.0.1:8080"},
			want: []string{`LANEGATE_ADMIN_LISTEN="127.0.0.1:8080": is also LANEGATE_LISTEN`},
		},
		{
			name: "upstream without scheme",
			env:  map[string]string{"LANEGATE_UPSTREAM": "127.0.0.1:8000"},
			want: []string{`LANEGATE_UPSTREAM="127.0.0.1:8000": not a URL`},
		},
		{
			name: "upstream scheme",
			env:  map[string]string{"LANEGATE_UPSTREAM": "ftp://app:21"},
			want: []string{`LANEGATE_UPSTREAM="ftp://app:21": scheme must be http or https`},
		},
		{
			name: "upstream without host",
			env:  map[string]string{"LANEGATE_UPSTREAM": "http:///x"},
			want: []string{`LANEGATE_UPSTREAM="http:///x": has no host`},
		},
		{
			name: "upstream with path",
			env:  map[string]string{"LANEGATE_UPSTREAM": "http://app:8000/app"},
			want: []string{`LANEGATE_UPSTREAM="http://app:8000/app": must not have a path`},
		},
		{
			name: "upstream with query",
			env:  map[string]string{"LANEGATE_UPSTREAM": "http://app:8000/?a=b"},
			want: []string{`LANEGATE_UPSTREAM="http://app:8000/?a=b": must not have a query or fragment`},
		},
		{
			name: "trusted proxies name every bad entry",
			env:  map[string]string{"LANEGATE_TRUSTED_PROXIES": "10.0.0.0/8,bogus,1.2.3.4/33"},
			want: []string{`LANEGATE_TRUSTED_PROXIES="10.0.0.0/8,bogus,1.2.3.4/33": "bogus", "1.2.3.4/33": not an IP address or CIDR prefix`},
		},
		{
			name: "tls cert without key",
			env:  map[string]string{"LANEGATE_TLS_CERT_FILE": cert},
			want: []string{"LANEGATE_TLS_KEY_FILE is empty but LANEGATE_TLS_CERT_FILE is set: set both to serve HTTPS, or neither"},
		},
		{
			name: "tls key without cert",
			env:  map[string]string{"LANEGATE_TLS_KEY_FILE": cert},
			want: []string{"LANEGATE_TLS_CERT_FILE is empty but LANEGATE_TLS_KEY_FILE is set"},
		},
		{
			name: "tls files missing",
			env: map[string]string{
				"LANEGATE_TLS_CERT_FILE": filepath.Join(dir, "missing.pem"),
				"LANEGATE_TLS_KEY_FILE":  dir,
			},
			want: []string{
				`LANEGATE_TLS_CERT_FILE="` + filepath.Join(dir, "missing.pem") + `": cannot read the file`,
				`LANEGATE_TLS_KEY_FILE="` + dir + `": is a directory, not a file`,
			},
		},
		{
			name: "unknown variable",
			env:  map[string]string{"LANEGATE_LOGN_MAX": "3"},
			want: []string{"LANEGATE_LOGN_MAX: unknown variable (did you mean LANEGATE_LOGIN_MAX?)"},
		},
		{
			name: "unknown variable far from any",
			env:  map[string]string{"LANEGATE_COLOUR": "blue"},
			want: []string{"LANEGATE_COLOUR: unknown variable"},
			not:  []string{"did you mean"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"LANEGATE_UPSTREAM_CPUS": "4"}
			for k, v := range tt.env {
				env[k] = v
			}
			cfg, err := Load(LoadOptions{Environ: environ(env)})
			if err == nil {
				t.Fatalf("Load: got no error, want one containing %q", tt.want)
			}
			if !reflect.DeepEqual(cfg, Config{}) {
				t.Errorf("Load: got a non-zero Config with an error, want the zero Config")
			}
			msg := err.Error() + "\n"
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error\n%s\ngot no %q, want it", msg, w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(msg, n) {
					t.Errorf("error\n%s\ngot %q, want it absent", msg, n)
				}
			}
			// Every line names a variable, so the operator knows what to fix.
			for line := range strings.SplitSeq(strings.TrimSpace(msg), "\n") {
				if !strings.Contains(line, prefix) {
					t.Errorf("error line %q: got no variable name, want one", line)
				}
			}
		})
	}
}

func TestLoadAccepts(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"admin on localhost", map[string]string{"LANEGATE_ADMIN_LISTEN": "localhost:9090"}},
		{"admin on ::1", map[string]string{"LANEGATE_ADMIN_LISTEN": "[::1]:9090"}},
		{"admin on 127.x", map[string]string{"LANEGATE_ADMIN_LISTEN": "127.1.2.3:9090"}},
		{"admin anywhere with a token", map[string]string{"LANEGATE_ADMIN_LISTEN": ":9090", "LANEGATE_ADMIN_TOKEN": "t"}},
		{"pgbouncer 0 disables the check", map[string]string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT": "0s"}},
		{"queue timeouts under pgbouncer's", map[string]string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT": "31s"}},
		// lanegate's queues hold no connection: with the budget within
		// the pool, a long hold is no problem at all.
		{"hold longer than pgbouncer's wait", map[string]string{"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT": "5s", "LANEGATE_LOGIN_MAX_HOLD": "60s"}},
		{"empty value means unset", map[string]string{"LANEGATE_BUDGET": "", "LANEGATE_LISTEN": ""}},
		{"rate 0 allows burst 0", map[string]string{"LANEGATE_LOGIN_RATE": "0", "LANEGATE_LOGIN_BURST": "0"}},
		{"closed export lane", map[string]string{"LANEGATE_EXPORT_MAX": "0"}},
		{"user max below derived reservations", map[string]string{"LANEGATE_LOGIN_MAX": "1", "LANEGATE_CORE_MAX": "3"}},
		{"tls with both files", nil},
	}
	dir := t.TempDir()
	for _, f := range []string{"c.pem", "k.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests[len(tests)-1].env = map[string]string{
		"LANEGATE_TLS_CERT_FILE": filepath.Join(dir, "c.pem"),
		"LANEGATE_TLS_KEY_FILE":  filepath.Join(dir, "k.pem"),
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Load(LoadOptions{Environ: environ(tt.env)}); err != nil {
				t.Errorf("Load: got error %v, want none", err)
			}
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, err := Load(LoadOptions{Environ: environ(map[string]string{
		"LANEGATE_BUDGET":         "abc",
		"LANEGATE_LOG_LEVEL":      "loud",
		"LANEGATE_ADMIN_LISTEN":   "0.0.0.0:9090",
		"LANEGATE_EXPORT_QUEUE":   "-1",
		"LANEGATE_LOGN_MAX":       "1",
		"LANEGATE_IDLE_TIMEOUT":   "0s",
		"LANEGATE_POOL_HEADROOM":  "200",
		"LANEGATE_LOGIN_PATHS":    "login",
		"LANEGATE_UPSTREAM":       "ftp://x",
		"LANEGATE_UPSTREAM_CPUS":  "2",
		"LANEGATE_ACCESS_LOG":     "maybe",
		"LANEGATE_LOGIN_RATE":     "-3",
		"LANEGATE_TLS_CERT_FILE":  "/nonexistent/cert.pem",
		"LANEGATE_CORE_QUEUE":     "ten",
		"LANEGATE_DB_POOL_SIZE":   "20",
		"LANEGATE_LOGIN_RESERVED": "1",
	})})
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("Load: got %v, want a joined error", err)
	}
	// BUDGET, LOG_LEVEL, ADMIN_TOKEN, EXPORT_QUEUE, LOGN_MAX, IDLE_TIMEOUT,
	// POOL_HEADROOM, LOGIN_PATHS, UPSTREAM, ACCESS_LOG, LOGIN_RATE,
	// TLS_KEY_FILE (missing), TLS_CERT_FILE (unreadable), CORE_QUEUE.
	if got, want := len(joined.Unwrap()), 14; got != want {
		t.Errorf("got %d problems, want %d:\n%v", got, want, err)
	}
}

// TestParseErrorsNameTheVariable feeds every variable a value its type
// cannot hold and checks the error starts with that variable. It guards the
// trick parse uses to learn which variable the env library is parsing.
func TestParseErrorsNameTheVariable(t *testing.T) {
	for _, f := range fields() {
		typ := reflect.TypeFor[Config]().FieldByIndex(f.index).Type
		if typ.Kind() == reflect.String || typ == reflect.TypeFor[[]string]() {
			continue // any text is a string; validation covers these
		}
		t.Run(f.name, func(t *testing.T) {
			const bad = "not-a-value!"
			_, err := Load(LoadOptions{Environ: []string{f.name + "=" + bad}})
			if err == nil {
				t.Fatalf("Load: got no error, want one")
			}
			first, _, _ := strings.Cut(err.Error(), "\n")
			if want := f.name + `="` + bad + `": `; !strings.HasPrefix(first, want) {
				t.Errorf("got %q, want it to start with %q", first, want)
			}
		})
	}
}

// TestVariablesMatchParser checks that Variables names exactly the
// variables the env library reads, and documents each.
func TestVariablesMatchParser(t *testing.T) {
	var parsed []string
	var cfg Config
	err := env.ParseWithOptions(&cfg, env.Options{
		Environment: map[string]string{},
		Prefix:      prefix,
		OnSet:       func(name string, _ any, _ bool) { parsed = append(parsed, name) },
		FuncMap:     parsers(func(v, r string) error { return errors.New(r) }),
	})
	if err != nil {
		t.Fatalf("parsing defaults: got error %v, want none", err)
	}
	var names []string
	for _, v := range Variables() {
		names = append(names, v.Name)
		if v.Description == "" {
			t.Errorf("%s: got no description, want one", v.Name)
		}
		if strings.ContainsAny(v.Description, "\n|") {
			t.Errorf("%s: description %q has a newline or pipe, want one plain line", v.Name, v.Description)
		}
	}
	if !slices.Equal(parsed, names) {
		t.Errorf("env library reads\n%v\nVariables lists\n%v\nwant the same", parsed, names)
	}
	for _, name := range []string{
		varListen, varUpstream, varAdminListen, varAdminToken, varTLSCert, varTLSKey, varPoolSize,
		varHeadroom, varBudget, varCPUs, varLoginRate, varLoginBurst, varClientRate, varClientBurst,
		varClientsMax, varQueryWait, varLoginPaths, varExportPaths, varBypassPaths, varReadHeader,
		varIdle, varMaxHeaderBytes, varMaxBodyBytes, varBufferBodyBytes, varBufferBodyTotal, varDial, varResponseHeader, varUpstreamIdle, varShutdown,
		varLogFormat, varLogLevel, varMode,
	} {
		if !slices.Contains(names, name) {
			t.Errorf("constant %s: got no such variable, want one", name)
		}
	}
}

func TestLoadIgnoresProcessEnvironment(t *testing.T) {
	// A nil Environ is empty: it must not fall back to os.Environ, which
	// the env library does when handed a nil map.
	t.Setenv("LANEGATE_BUDGET", "abc")
	cfg, err := Load(LoadOptions{})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	if cfg.Admission.Budget != nil {
		t.Errorf("Budget: got %d, want nil", *cfg.Admission.Budget)
	}
}

func TestLoadSkipsMalformedEnviron(t *testing.T) {
	cfg, err := Load(LoadOptions{Environ: []string{"GARBAGE", "LANEGATE_BUDGET=7", "=x"}})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	if got := cfg.Limits().Budget; got != 7 {
		t.Errorf("budget: got %d, want 7", got)
	}
}

func TestBothListenersOnPortZero(t *testing.T) {
	_, err := Load(LoadOptions{Environ: []string{"LANEGATE_LISTEN=127.0.0.1:0", "LANEGATE_ADMIN_LISTEN=127.0.0.1:0"}})
	if err != nil {
		t.Fatalf("got %v, want two port-0 listeners accepted", err)
	}
}

func TestQueryWaitWarnsOnlyBeyondThePool(t *testing.T) {
	within, err := Load(LoadOptions{Environ: []string{"LANEGATE_DB_POOL_SIZE=20", "LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=5s"}})
	if err != nil {
		t.Fatal(err)
	}
	if w := within.Warnings(); len(w) != 0 {
		t.Errorf("budget within the pool: warnings %q, want none", w)
	}
	beyond, err := Load(LoadOptions{Environ: []string{"LANEGATE_DB_POOL_SIZE=20", "LANEGATE_BUDGET=30",
		"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=20s"}})
	if err != nil {
		t.Fatalf("a warning must not refuse the configuration: %v", err)
	}
	w := strings.Join(beyond.Warnings(), "\n")
	for _, want := range []string{
		"LANEGATE_LOGIN_MAX_HOLD=30s (default) is not shorter than LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=20s while LANEGATE_BUDGET=30 exceeds LANEGATE_DB_POOL_SIZE=20",
		"LANEGATE_EXPORT_QUEUE_TIMEOUT=30s (default) is not shorter",
	} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q: want one containing %q", w, want)
		}
	}
	if strings.Contains(w, "LANEGATE_CORE_QUEUE_TIMEOUT") {
		t.Errorf("warnings %q name the core lane, whose 5s is shorter", w)
	}
}

// A bound on all buffered bodies below the largest body buffered is
// allowed, since such a body still streams, but said: it is more likely a
// per-body size written in the wrong variable.
func TestBufferBodyTotalBelowOneBodyWarns(t *testing.T) {
	for _, tt := range []struct {
		env  []string
		warn bool
	}{
		{[]string{"LANEGATE_BUFFER_BODY_TOTAL_BYTES=65535"}, true},
		{[]string{"LANEGATE_BUFFER_BODY_TOTAL_BYTES=65536"}, false},
		{[]string{"LANEGATE_BUFFER_BODY_TOTAL_BYTES=0"}, false},
		{[]string{"LANEGATE_BUFFER_BODY_TOTAL_BYTES=100", "LANEGATE_BUFFER_BODY_BYTES=0"}, false},
	} {
		cfg, err := Load(LoadOptions{Environ: tt.env})
		if err != nil {
			t.Fatalf("%v: got error %v, want none", tt.env, err)
		}
		w := strings.Join(cfg.Warnings(), "\n")
		want := "LANEGATE_BUFFER_BODY_TOTAL_BYTES=65535 is less than LANEGATE_BUFFER_BODY_BYTES=65536 (default)"
		if got := strings.Contains(w, "LANEGATE_BUFFER_BODY_TOTAL_BYTES"); got != tt.warn || tt.warn && !strings.Contains(w, want) {
			t.Errorf("%v: warnings %q; want a warning %v (%q)", tt.env, w, tt.warn, want)
		}
	}
}

func TestAnonMaxDerivedOnlyWithSessions(t *testing.T) {
	off, err := Load(LoadOptions{Environ: []string{"LANEGATE_DB_POOL_SIZE=20"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := off.Limits().AnonMax; got != 0 {
		t.Errorf("without sessions: AnonMax %d, want 0 (no request is known to be logged in)", got)
	}
	on, err := Load(LoadOptions{Environ: []string{"LANEGATE_DB_POOL_SIZE=20", "LANEGATE_SESSION_STORE=memory",
		"LANEGATE_IDENTITY_SECRET=" + strings.Repeat("s", 32)}})
	if err != nil {
		t.Fatal(err)
	}
	// Budget 16, core max 16: half of it.
	if got := on.Limits().AnonMax; got != 8 {
		t.Errorf("with sessions: AnonMax %d, want 8", got)
	}
}

// A large pool derives queues that the controller can still count.
func TestLargePoolDerivesValidQueues(t *testing.T) {
	cfg, err := Load(LoadOptions{Environ: []string{"LANEGATE_DB_POOL_SIZE=4095"}})
	if err != nil {
		t.Fatalf("pool 4095: %v", err)
	}
	if err := cfg.Limits().Validate(); err != nil {
		t.Fatalf("derived limits: %v", err)
	}
}
