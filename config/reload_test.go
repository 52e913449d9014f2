package config

import (
	"maps"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// reloadEnv is the environment the reload tests change one variable of at
// a time, and the alternative values of the variables whose type alone
// does not say what else they could validly be. The environment makes
// every alternative both valid and visible: a pool small enough that each
// step moves the budget, a fixed CPU count, TLS files and a session store
// with its secrets, so that neighbouring variables may change too.
func reloadEnv(t *testing.T) (base map[string]string, values map[string][]string) {
	t.Helper()
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("not read by Load\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base = map[string]string{
		varPoolSize:       "10",
		varHeadroom:       "0",
		varCPUs:           "2",
		varTLSCert:        file("cert.pem"),
		varTLSKey:         file("key.pem"),
		varSessionStore:   StoreMemory,
		varIdentitySecret: "reload-test-identity-secret-0123456789",
		varRedisURL:       "redis://127.0.0.1:6379/0",
	}
	values = map[string][]string{
		varListen:         {"127.0.0.1:8081"},
		varTLSCert:        {file("other-cert.pem")},
		varTLSKey:         {file("other-key.pem")},
		varUpstream:       {"http://127.0.0.1:8001"},
		varAdminListen:    {"127.0.0.1:9091"},
		varTicketSecret:   {"reload-test-ticket-secret-0123456789"},
		varSessionStore:   {StoreRedis, StoreOff},
		varIdentitySecret: {"reload-test-other-identity-secret-0123"},
		varRedisURL:       {"redis://127.0.0.1:6379/1"},
		varPgBouncerURL:   {"postgres://stats@127.0.0.1:6432/pgbouncer"},
		varFleet:          {FleetRedis},
		varFleetRenew:     {"500ms"},
		varLogFormat:      {"console"},
		varLogLevel:       {"debug"},
	}
	return base, values
}

// alternatives returns values for f other than its value in force in
// base: those given in values, else ones made from the value by its type.
// Not all need be valid; the caller keeps those Load accepts.
func alternatives(f field, base Config, values map[string][]string) []string {
	if v, ok := values[f.name]; ok {
		return v
	}
	cur := base.resolve().vars[f.name].value // "" when unset
	typ := reflect.TypeFor[Config]().FieldByIndex(f.index).Type
	if typ.Kind() == reflect.Pointer && typ != reflect.TypeFor[*url.URL]() {
		typ = typ.Elem()
	}
	list := func(extra string) string {
		if cur == "" {
			return extra
		}
		return cur + "," + extra
	}
	switch typ {
	case reflect.TypeFor[int](), reflect.TypeFor[int64]():
		n, _ := strconv.ParseInt(cur, 10, 64)
		out := []string{strconv.FormatInt(n+1, 10)}
		if n > 0 {
			out = append(out, strconv.FormatInt(n-1, 10))
		}
		return out
	case reflect.TypeFor[float64]():
		x, _ := strconv.ParseFloat(cur, 64)
		return []string{strconv.FormatFloat(x+1, 'g', -1, 64)}
	case reflect.TypeFor[bool]():
		b, _ := strconv.ParseBool(cur)
		return []string{strconv.FormatBool(!b)}
	case reflect.TypeFor[time.Duration]():
		d, _ := time.ParseDuration(cur)
		return []string{(d + time.Second).String()}
	case reflect.TypeFor[Mode]():
		var out []string
		for _, m := range []Mode{ModeEnforce, ModeShadow, ModeOff} {
			if string(m) != cur {
				out = append(out, string(m))
			}
		}
		return out
	case reflect.TypeFor[[]string]():
		return []string{list("/reload-test/")}
	case reflect.TypeFor[[]netip.Prefix]():
		return []string{list("192.0.2.0/24")}
	case reflect.TypeFor[string]():
		if cur == "" {
			return []string{"reload-test"}
		}
		return []string{cur + "-reload-test"}
	}
	return nil
}

// variant is the base configuration with one variable changed.
type variant struct {
	value string
	cfg   Config
}

// variants loads base with f set to each of its alternatives, and fails
// the test when none is valid: a new variable then needs a value in
// reloadEnv.
func variants(t *testing.T, f field, base map[string]string, baseCfg Config, values map[string][]string) []variant {
	t.Helper()
	alts := alternatives(f, baseCfg, values)
	if len(alts) == 0 {
		t.Errorf("%s: no alternative value for its type %s: give it one in reloadEnv",
			f.name, reflect.TypeFor[Config]().FieldByIndex(f.index).Type)
		return nil
	}
	var out []variant
	var errs []string
	for _, alt := range alts {
		env := maps.Clone(base)
		env[f.name] = alt
		cfg, err := Load(LoadOptions{Environ: environ(env)})
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		was, now := formatValue(reflect.ValueOf(baseCfg).FieldByIndex(f.index)), formatValue(reflect.ValueOf(cfg).FieldByIndex(f.index))
		if was == now {
			t.Errorf("%s=%q: the configured value stays %q; want an alternative that changes it", f.name, alt, was)
			continue
		}
		out = append(out, variant{alt, cfg})
	}
	if len(out) == 0 && len(errs) > 0 {
		t.Errorf("%s: Load refuses every alternative tried, %q:\n%s\ngive it a valid one in reloadEnv",
			f.name, alts, strings.Join(errs, "\n"))
	}
	return out
}

func loadReloadBase(t *testing.T) (map[string]string, map[string][]string, Config) {
	t.Helper()
	base, values := reloadEnv(t)
	cfg, err := Load(LoadOptions{Environ: environ(base)})
	if err != nil {
		t.Fatalf("Load of the base: got error %v, want none", err)
	}
	return base, values, cfg
}

// TestRestartOnlyNamesEachChangedVariable changes every variable in turn:
// RestartOnly must name exactly that one when a reload cannot apply it,
// and nothing when it can.
func TestRestartOnlyNamesEachChangedVariable(t *testing.T) {
	base, values, baseCfg := loadReloadBase(t)
	if got := RestartOnly(baseCfg, baseCfg); got != nil {
		t.Errorf("RestartOnly of a configuration and itself: got %q, want nil", got)
	}
	for _, f := range fields() {
		t.Run(f.name, func(t *testing.T) {
			var want []string
			if !f.live() {
				want = []string{f.name}
			}
			for _, v := range variants(t, f, base, baseCfg, values) {
				if got := RestartOnly(baseCfg, v.cfg); !slices.Equal(got, want) {
					t.Errorf("%s=%q: RestartOnly(base, changed) = %q, want %q", f.name, v.value, got, want)
				}
				if got := RestartOnly(v.cfg, baseCfg); !slices.Equal(got, want) {
					t.Errorf("%s=%q: RestartOnly(changed, base) = %q, want %q", f.name, v.value, got, want)
				}
			}
		})
	}
}

// applied is what a reload hands the running process: the limits, which
// the admission controller's Reconfigure takes whole, the mode, and the
// lane path rules (the handler's SetRules). LANEGATE_LOGIN_REQUIRED_PATHS
// is not among them: the handler builds its matcher once, at start.
type applied struct {
	Limits                admission.Limits
	Mode                  Mode
	Login, Export, Bypass []string
}

func appliedBy(c Config) applied {
	return applied{
		Limits: c.Limits(),
		Mode:   c.Admission.Mode,
		Login:  c.Routes.LoginPaths,
		Export: c.Routes.ExportPaths,
		Bypass: c.Routes.BypassPaths,
	}
}

// alsoMovesApplied are restart-only variables that other, live values are
// derived from: a reload applies the derived value, never the variable.
var alsoMovesApplied = map[string]string{
	varSessionStore: "LANEGATE_ANON_MAX's default depends on whether there is a session cache",
}

// TestLiveVariablesReachTheRunningProcess checks the reload tags against
// what a reload really applies: a change to a live variable must change
// the limits, mode or lane rules, and a change to a restart-only one must
// not, so a variable tagged on the wrong side fails here.
func TestReloadAppliesLiveVariablesOnly(t *testing.T) {
	base, values, baseCfg := loadReloadBase(t)
	was := appliedBy(baseCfg)
	for _, f := range fields() {
		t.Run(f.name, func(t *testing.T) {
			vs := variants(t, f, base, baseCfg, values)
			if !f.live() {
				if _, ok := alsoMovesApplied[f.name]; ok {
					return
				}
				for _, v := range vs {
					if now := appliedBy(v.cfg); !reflect.DeepEqual(now, was) {
						t.Errorf("%s=%q changes what a reload applies:\n got %+v\nwas %+v\n"+
							"tag it reload:\"live\" if that is all it changes", f.name, v.value, now, was)
					}
				}
				return
			}
			reached := false
			for _, v := range vs {
				now := appliedBy(v.cfg)
				if reflect.DeepEqual(now, was) {
					continue
				}
				reached = true
				ctrl, err := admission.New(baseCfg.Limits())
				if err != nil {
					t.Fatalf("admission.New(base limits): %v", err)
				}
				if err := ctrl.Reconfigure(now.Limits); err != nil {
					t.Errorf("%s=%q: Reconfigure refuses the limits Load accepted: %v", f.name, v.value, err)
				} else if got := ctrl.Limits(); got != now.Limits {
					t.Errorf("%s=%q: after Reconfigure the controller has %+v, want %+v", f.name, v.value, got, now.Limits)
				}
			}
			if !reached && len(vs) > 0 {
				t.Errorf("%s is tagged reload:\"live\", but changing it (to %q) changes neither the limits, the mode nor the lane rules",
					f.name, vs[0].value)
			}
		})
	}
	for name := range alsoMovesApplied {
		if !slices.ContainsFunc(fields(), func(f field) bool { return f.name == name && !f.live() }) {
			t.Errorf("alsoMovesApplied lists %s, which is not a restart-only variable", name)
		}
	}
}

// TestReloadTags guards the tag against typos, which would silently make
// a variable restart-only.
func TestReloadTags(t *testing.T) {
	live := 0
	for _, f := range fields() {
		switch v, ok := f.tag.Lookup("reload"); {
		case !ok:
		case v == "live":
			live++
		default:
			t.Errorf("%s: reload tag %q, want live or no tag", f.name, v)
		}
	}
	if live == 0 {
		t.Errorf("no variable is tagged reload:\"live\"; want the admission limits, mode and lane rules")
	}
	for _, v := range Variables() {
		if v.Live != slices.ContainsFunc(fields(), func(f field) bool { return f.name == v.Name && f.live() }) {
			t.Errorf("%s: Variable.Live is %v, want it to follow the tag", v.Name, v.Live)
		}
	}
}

// TestRestartOnlyCompares checks that values are compared as settings, not
// as Go values that happen to be distinct.
func TestRestartOnlyCompares(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	ptr := func(d time.Duration) *time.Duration { return &d }
	prefixes := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		name   string
		change func(a, b *Config)
		want   []string
	}{
		{"one URL, two pointers", func(a, b *Config) {
			a.Upstream.URL, b.Upstream.URL = mustURL("http://127.0.0.1:8000"), mustURL("http://127.0.0.1:8000")
		}, nil},
		{"another URL", func(a, b *Config) {
			a.Upstream.URL, b.Upstream.URL = mustURL("http://127.0.0.1:8000"), mustURL("http://127.0.0.1:8001")
		}, []string{varUpstream}},
		{"URL against none", func(a, b *Config) { a.Upstream.URL = mustURL("http://127.0.0.1:8000") }, []string{varUpstream}},
		{"one duration, two pointers", func(a, b *Config) {
			a.Admission.PgBouncerQueryWaitTimeout, b.Admission.PgBouncerQueryWaitTimeout = ptr(time.Minute), ptr(time.Minute)
		}, nil},
		{"unset against zero", func(a, b *Config) { b.Admission.PgBouncerQueryWaitTimeout = ptr(0) }, []string{varQueryWait}},
		{"one list of prefixes, two slices", func(a, b *Config) {
			a.Server.TrustedProxies, b.Server.TrustedProxies = prefixes("10.0.0.0/8", "::1/128"), prefixes("10.0.0.0/8", "::1/128")
		}, nil},
		{"another prefix", func(a, b *Config) {
			a.Server.TrustedProxies, b.Server.TrustedProxies = prefixes("10.0.0.0/8"), prefixes("10.0.0.0/16")
		}, []string{prefix + "TRUSTED_PROXIES"}},
		{"empty list against none", func(a, b *Config) { a.Log.RedactPaths = []string{} }, nil},
		{"live values only", func(a, b *Config) {
			n := 3
			b.Admission.Budget, b.Admission.Mode, b.Routes.ExportPaths = &n, ModeOff, []string{"/reports/"}
		}, nil},
		{"declaration order", func(a, b *Config) {
			b.Log.Level, b.Server.Listen, b.Session.TTL = "debug", ":1", time.Hour
		}, []string{varListen, varSessionTTL, varLogLevel}},
		{"where it was set", func(a, b *Config) {
			a.origin, b.origin = map[string]string{varListen: ""}, map[string]string{varListen: "lanegate.env"}
			a.warnings = []string{"a warning"}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a, b Config
			tt.change(&a, &b)
			if got := RestartOnly(a, b); !slices.Equal(got, tt.want) {
				t.Errorf("RestartOnly: got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRestartOnlyEnvFileAgainstEnvironment: the same values read from a
// file or from the environment are the same configuration.
func TestRestartOnlyEnvFileAgainstEnvironment(t *testing.T) {
	vars := []string{
		"LANEGATE_UPSTREAM=http://127.0.0.1:8000",
		"LANEGATE_TRUSTED_PROXIES=10.0.0.0/8,::1",
		"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=120s",
		"LANEGATE_LOGIN_REQUIRED_PATHS=/app/",
	}
	file := filepath.Join(t.TempDir(), "lanegate.env")
	if err := os.WriteFile(file, []byte(strings.Join(vars, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromEnv, err := Load(LoadOptions{Environ: vars})
	if err != nil {
		t.Fatalf("Load from the environment: got error %v, want none", err)
	}
	fromFile, err := Load(LoadOptions{EnvFile: file})
	if err != nil {
		t.Fatalf("Load from the file: got error %v, want none", err)
	}
	if got := RestartOnly(fromEnv, fromFile); got != nil {
		t.Errorf("RestartOnly: got %q, want nil", got)
	}
}
