package deploy

import (
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/config"
)

// composeFile is a Compose file, decoded (YAML anchors and merge keys
// resolved, as Compose resolves them).
type composeFile struct {
	path string
	doc  map[string]any
}

func readCompose(t *testing.T, name string) composeFile {
	t.Helper()
	path := filepath.Join("compose", name)
	return composeFile{path: path, doc: yamlFile(t, path)}
}

func (c composeFile) services() map[string]any {
	m, _ := get(c.doc, "services").(map[string]any)
	return m
}

// rel resolves a path of the Compose file, relative to its directory.
func (c composeFile) rel(p string) string { return filepath.Join(filepath.Dir(c.path), p) }

// stringsOf reads a list of strings (a command, a port list).
func stringsOf(v any) []string {
	var out []string
	for _, x := range list(v) {
		switch s := x.(type) {
		case string:
			out = append(out, s)
		case int:
			out = append(out, strconv.Itoa(s))
		}
	}
	return out
}

// composeService is one lanegate of a Compose file, as the container
// would start it.
type composeService struct {
	name string
	svc  any
	// envFile is the file lanegate reads as its env file, in the
	// repository: the one mounted where --env-file points or, without
	// the flag, at the default path, else the one the image ships
	// there; "" for none. env is the container's environment: the
	// image's, then env_file's, then environment's, each overriding the
	// one before, and all of them the file.
	envFile string
	env     map[string]string
	cfg     config.Config
	// ports are the container ports the service exposes or publishes;
	// published maps a published container port to its host bindings.
	ports     []int
	published map[int][]string
}

// lanegates returns the Compose file's services that run the lanegate
// image, each with its configuration loaded as lanegate would load it.
func (c composeFile) lanegates(t *testing.T) []composeService {
	t.Helper()
	img := dockerfile(t)
	var out []composeService
	for _, name := range slices.Sorted(maps.Keys(c.services())) {
		svc := c.services()[name]
		if get(svc, "build") == nil {
			continue
		}
		s := composeService{name: name, svc: svc, env: map[string]string{}, published: map[int][]string{}}
		ctx := c.rel(str(svc, "build", "context"))
		if _, err := os.Stat(filepath.Join(ctx, str(svc, "build", "dockerfile"))); err != nil || filepath.Clean(ctx) != ".." {
			t.Errorf("%s: %s builds %s/%s; want the repository's Dockerfile", c.path, name, ctx, str(svc, "build", "dockerfile"))
		}
		for k, v := range img.env {
			s.env[k] = v
		}
		for _, f := range stringsOf(get(svc, "env_file")) {
			for k, v := range readEnvFile(t, secretsFile(t, c.rel(f))) {
				s.env[k] = v
			}
		}
		switch e := get(svc, "environment").(type) {
		case map[string]any:
			for k := range e {
				s.env[k] = str(e, k)
			}
		case []any:
			for _, kv := range stringsOf(e) {
				k, v, _ := strings.Cut(kv, "=")
				s.env[k] = v
			}
		}
		command := stringsOf(get(svc, "command"))
		// Where lanegate looks for its env file, as cmd/lanegate resolves
		// --env-file: the flag's file, which must exist, else the default
		// one if it does.
		inImage, explicit := defaultEnvFile(t), false
		if i := slices.Index(command, "--env-file"); i >= 0 && i+1 < len(command) {
			inImage, explicit = command[i+1], true
		}
		for _, v := range stringsOf(get(svc, "volumes")) {
			src, dst, _ := strings.Cut(v, ":")
			dst, _, _ = strings.Cut(dst, ":")
			if dst == inImage {
				s.envFile = c.rel(src) // the mount hides what the image has there
			}
		}
		if s.envFile == "" && inImage == defaultEnvFile(t) {
			s.envFile = img.envFile
		}
		if s.envFile == "" && explicit && inImage != "" {
			t.Fatalf("%s: %s reads --env-file %s, which no volume mounts and the image does not ship", c.path, name, inImage)
		}
		if s.envFile != "" {
			for k := range readEnvFile(t, s.envFile) {
				if _, ok := s.env[k]; ok {
					t.Errorf("%s: %s sets %s in %s, but the container's environment (the image's, env_file or environment) sets it too and wins: the file's value is never used",
						c.path, name, k, s.envFile)
				}
			}
		}
		s.cfg = load(t, s.envFile, s.env)
		for _, p := range stringsOf(get(svc, "expose")) {
			s.ports = append(s.ports, atoi(t, p))
		}
		for _, p := range stringsOf(get(svc, "ports")) {
			// [host-ip:]host-port:container-port
			parts := strings.Split(p, ":")
			cp := atoi(t, parts[len(parts)-1])
			s.ports = append(s.ports, cp)
			s.published[cp] = append(s.published[cp], strings.Join(parts[:len(parts)-1], ":"))
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no service builds lanegate", c.path)
	}
	return out
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("port %q: %v", s, err)
	}
	return n
}

// checkComposeFile checks what every Compose file must get right for each
// lanegate it runs.
func checkComposeFile(t *testing.T, c composeFile) []composeService {
	t.Helper()
	services := c.services()
	lgs := c.lanegates(t)
	img := dockerfile(t)
	for _, s := range lgs {
		listen, admin := port(t, s.cfg.Server.Listen), port(t, s.cfg.Admin.Listen)
		// A listener on the container's loopback is out of reach of a
		// published port, of HAProxy and of the other services.
		for _, l := range []string{s.cfg.Server.Listen, s.cfg.Admin.Listen} {
			if !allInterfaces(l) {
				t.Errorf("%s: %s listens on %s, inside its container only: want all interfaces", c.path, s.name, l)
			}
		}
		for _, p := range []int{listen, admin} {
			if !slices.Contains(s.ports, p) {
				t.Errorf("%s: %s listens on %d (LANEGATE_LISTEN=%s, LANEGATE_ADMIN_LISTEN=%s), which it neither exposes nor publishes (%v)",
					c.path, s.name, p, s.cfg.Server.Listen, s.cfg.Admin.Listen, s.ports)
			}
		}
		for _, host := range s.published[admin] {
			if !strings.HasPrefix(host, "127.0.0.1:") {
				t.Errorf("%s: %s publishes its admin port on %q: keep it on the host's loopback", c.path, s.name, host)
			}
		}
		// The health check, the service's or else the image's, runs the
		// image's own binary (there is no shell or curl) with the same
		// flags, and so the same configuration, as the server.
		hc := stringsOf(get(s.svc, "healthcheck", "test"))
		if hc == nil {
			hc = append([]string{"CMD"}, img.healthcheck...)
		}
		command := stringsOf(get(s.svc, "command"))
		if len(command) == 0 {
			t.Fatalf("%s: %s: no command; want it to say serve", c.path, s.name)
		}
		want := append(append([]string{"CMD"}, img.entrypoint...), command[:len(command)-1]...)
		want = append(want, "healthcheck")
		if !slices.Equal(hc, want) || command[len(command)-1] != "serve" {
			t.Errorf("%s: %s: command %v, healthcheck %v; want the command ending in serve and the healthcheck %v", c.path, s.name, command, hc, want)
		}
		grace, err := time.ParseDuration(str(s.svc, "stop_grace_period"))
		if err != nil || grace <= s.cfg.Server.ShutdownTimeout+5*time.Second {
			t.Errorf("%s: %s: stop_grace_period %q (%v) does not outlast LANEGATE_SHUTDOWN_TIMEOUT=%s with room to close",
				c.path, s.name, str(s.svc, "stop_grace_period"), err, s.cfg.Server.ShutdownTimeout)
		}
		// The app and Redis it is configured with are services of the
		// file, on ports they expose.
		targets := []string{s.cfg.Upstream.URL.Host}
		if s.cfg.Session.Store == config.StoreRedis || s.cfg.Fleet.Mode == config.FleetRedis {
			targets = append(targets, redisHost(t, s.cfg.Session.RedisURL))
		}
		for _, hostport := range targets {
			host, p, _ := strings.Cut(hostport, ":")
			if !slices.Contains(stringsOf(get(services, host, "expose")), p) {
				t.Errorf("%s: %s is configured to reach %s, but service %q does not expose %s", c.path, s.name, hostport, host, p)
			}
			if get(s.svc, "depends_on", host) == nil {
				t.Errorf("%s: %s does not depend on %s", c.path, s.name, host)
			}
		}
	}
	for name, svc := range services {
		deps, _ := get(svc, "depends_on").(map[string]any)
		for _, d := range append(slices.Collect(maps.Keys(deps)), stringsOf(get(svc, "depends_on"))...) {
			if services[d] == nil {
				t.Errorf("%s: %s depends on %q, which is not a service", c.path, name, d)
			}
		}
	}
	// A secrets file the stack reads but the repository does not hold
	// must be one git ignores, so that nobody commits the real one.
	ignore, _ := os.ReadFile(c.rel(".gitignore"))
	for _, s := range lgs {
		for _, f := range stringsOf(get(s.svc, "env_file")) {
			if _, err := os.Stat(c.rel(f)); err != nil && !slices.Contains(strings.Fields(string(ignore)), f) {
				t.Errorf("%s: %s reads %s, which compose/.gitignore does not ignore", c.path, s.name, f)
			}
		}
	}
	return lgs
}

var redisAddr = regexp.MustCompile(`^rediss?://(?:[^@/]*@)?([^/?]+)`)

func redisHost(t *testing.T, u string) string {
	t.Helper()
	m := redisAddr.FindStringSubmatch(u)
	if m == nil {
		t.Fatalf("LANEGATE_REDIS_URL %q: want redis://host:port/db", u)
	}
	return m[1]
}

func TestComposeSingle(t *testing.T) {
	c := readCompose(t, "compose.yaml")
	lgs := checkComposeFile(t, c)
	if len(lgs) != 1 || lgs[0].cfg.Fleet.Mode != config.FleetOff {
		t.Errorf("%s: want one lanegate, not in fleet mode", c.path)
	}
}

// TestComposeFleet checks the two-replica stack: fleet mode on each, one
// ticket secret for both, distinct instance ids, and HAProxy balancing
// over their client ports with /readyz on their admin ports, trusted as
// the proxy it is.
func TestComposeFleet(t *testing.T) {
	c := readCompose(t, "compose.fleet.yaml")
	lgs := checkComposeFile(t, c)
	if len(lgs) < 2 {
		t.Fatalf("%s: %d lanegates, want at least two", c.path, len(lgs))
	}
	ids := map[string]bool{}
	for _, s := range lgs {
		if s.cfg.Fleet.Mode != config.FleetRedis {
			t.Errorf("%s: %s: LANEGATE_FLEET=%s, want redis", c.path, s.name, s.cfg.Fleet.Mode)
		}
		if s.cfg.Admission.TicketSecret == "" || s.cfg.Admission.TicketSecret != lgs[0].cfg.Admission.TicketSecret {
			t.Errorf("%s: %s's LANEGATE_TICKET_SECRET is not the one %s has: a login sent away by one replica would lose its place on the other", c.path, s.name, lgs[0].name)
		}
		if id := s.cfg.Fleet.InstanceID; id == "" || ids[id] {
			t.Errorf("%s: %s: LANEGATE_INSTANCE_ID %q is empty or not unique", c.path, s.name, id)
		}
		ids[s.cfg.Fleet.InstanceID] = true
	}

	cfgPath := ""
	var lb any
	for name, svc := range c.services() {
		for _, v := range stringsOf(get(svc, "volumes")) {
			if strings.HasSuffix(strings.SplitN(v, ":", 2)[0], "haproxy.cfg") {
				cfgPath, lb = c.rel(strings.SplitN(v, ":", 2)[0]), c.services()[name]
			}
		}
	}
	if cfgPath == "" {
		t.Fatalf("%s: no service mounts haproxy.cfg", c.path)
	}
	hp := readHAProxy(t, cfgPath)
	var servers []string
	for _, s := range hp.servers {
		servers = append(servers, s.host)
		i := slices.IndexFunc(lgs, func(l composeService) bool { return l.name == s.host })
		if i < 0 {
			t.Errorf("%s: server %s is not a lanegate of %s", cfgPath, s.host, c.path)
			continue
		}
		l := lgs[i]
		if s.port != port(t, l.cfg.Server.Listen) || s.check != port(t, l.cfg.Admin.Listen) {
			t.Errorf("%s: server %s: traffic to %d, checks on %d; want LANEGATE_LISTEN's %d and LANEGATE_ADMIN_LISTEN's %d",
				cfgPath, s.host, s.port, s.check, port(t, l.cfg.Server.Listen), port(t, l.cfg.Admin.Listen))
		}
	}
	for _, l := range lgs {
		if !slices.Contains(servers, l.name) {
			t.Errorf("%s: lanegate %s is not among HAProxy's servers %v", cfgPath, l.name, servers)
		}
	}
	checkReadiness(t, cfgPath+" httpchk", hp.check)
	// lanegate trusts HAProxy's X-Forwarded-For, and only HAProxy's.
	addr, err := netip.ParseAddr(str(lb, "networks", "edge", "ipv4_address"))
	if err != nil {
		t.Fatalf("%s: HAProxy has no fixed address: %v", c.path, err)
	}
	for _, l := range lgs {
		tp := l.cfg.Server.TrustedProxies
		if len(tp) != 1 || !tp[0].Contains(addr) || tp[0].Bits() != 32 {
			t.Errorf("%s: LANEGATE_TRUSTED_PROXIES=%v: want HAProxy's address %s alone", l.name, tp, addr)
		}
	}
	haproxy := tool(t, "haproxy", "haproxy", "haproxy.cfg's syntax")
	run(t, "", haproxy, "-c", "-q", "-f", cfgPath)
}

// haproxyConfig is what the tests read of an HAProxy configuration: the
// health check's path and the backend's servers.
type haproxyConfig struct {
	check   string
	servers []haproxyServer
}

type haproxyServer struct {
	host        string
	port, check int
}

func readHAProxy(t *testing.T, path string) haproxyConfig {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var hc haproxyConfig
	checkPort := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 4 && f[0] == "option" && f[1] == "httpchk":
			hc.check = f[len(f)-1]
		case len(f) >= 1 && f[0] == "default-server":
			if i := slices.Index(f, "port"); i >= 0 && i+1 < len(f) {
				checkPort = atoi(t, f[i+1])
			}
		case len(f) >= 3 && f[0] == "server":
			host, p, _ := strings.Cut(f[2], ":")
			s := haproxyServer{host: host, port: atoi(t, p), check: checkPort}
			if i := slices.Index(f, "port"); i >= 0 && i+1 < len(f) {
				s.check = atoi(t, f[i+1])
			}
			hc.servers = append(hc.servers, s)
		}
	}
	if hc.check == "" || len(hc.servers) == 0 {
		t.Fatalf("%s: no option httpchk or no server", path)
	}
	return hc
}
