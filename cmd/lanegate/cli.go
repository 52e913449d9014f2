package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/metrics"
)

// usage prints what lanegate does, its commands, its flags and where its
// configuration is documented: everything else is a LANEGATE_* variable.
func usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprintf(w, `lanegate: an auth-aware reverse proxy that admits requests to a Django app by
lane, under a concurrency budget sized to its database pool.

usage: lanegate [--env-file FILE] [command]

commands:
  serve          run the proxy (the default)
  config [--strict]
                 print the configuration in force, each value with where it came from
                 (set, default, derived; sized from PgBouncer when LANEGATE_PGBOUNCER_URL is set),
                 and on stderr the warnings serve would log at start;
                 --strict: exit status 2 when there are any (1 when the configuration is invalid)
  config --markdown
                 print the reference table of every variable
  doctor [--app URL] [--timeout D] [--conn-max-age N|None]
                 check the configuration against PgBouncer's console and the app server;
                 exit status 1 when something must change
  healthcheck    exit 0 when the admin listener's /readyz answers 200, else 1
                 (for container health checks; it reads the configuration as serve does)
  version        print the version (on /metrics: lanegate_build_info)
  help           print this

flags:
`)
	fs.PrintDefaults()
	fmt.Fprintf(w, `
configuration: %d LANEGATE_* environment variables. The environment wins over
the env file: --env-file FILE's, else %s when it exists
(--env-file '' reads none); built-in defaults fill the rest. An unknown
LANEGATE_* variable is an error. The essentials:
  LANEGATE_LISTEN        client address (:8080)
  LANEGATE_UPSTREAM      the Django app server (http://127.0.0.1:8000)
  LANEGATE_DB_POOL_SIZE  PgBouncer's pool for the app (20); the budget and lanes derive from it
  LANEGATE_PGBOUNCER_URL PgBouncer's admin console, to size from it and follow it
  LANEGATE_ADMIN_LISTEN  /healthz, /readyz, /status, /metrics (127.0.0.1:9090)
'lanegate config --markdown' lists them all; README.md explains the model.
`, len(config.Variables()), defaultEnvFile)
}

// envFileUsage is --env-file's line in the usage, for every command that
// takes it.
var envFileUsage = "dotenv `file` read under the environment (the environment wins); without the flag, " +
	defaultEnvFile + " when it exists; '' reads none"

// envFileFlag is --env-file: the file named, and whether the flag was
// given at all, which tells an empty --env-file (read no file) from no
// flag (read the default file if there is one).
type envFileFlag struct {
	path string
	set  bool
}

func (f *envFileFlag) String() string {
	if f == nil {
		return ""
	}
	return f.path
}

func (f *envFileFlag) Set(s string) error {
	f.path, f.set = s, true
	return nil
}

// envFile is the env file to read, "" for none: the one --env-file names
// (a missing one is then an error, from config.Load), else the default
// file when it exists, read exactly as if --env-file had named it. A
// default file that exists but cannot be read is an error too: only its
// absence means "none".
func (a app) envFile(f *envFileFlag) string {
	if f.set || a.defaultEnvFile == "" {
		return f.path
	}
	if _, err := os.Stat(a.defaultEnvFile); errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	return a.defaultEnvFile
}

// warning is one thing serve warns of as it starts: a message, and the
// error behind it when there is one.
type warning struct {
	msg string
	err error
}

func (w warning) String() string {
	if w.err == nil {
		return w.msg
	}
	return w.msg + ": " + w.err.Error()
}

// startWarnings are the warnings serve logs as it starts on cfg, and
// lanegate config prints: that sizing from PgBouncer's pool failed
// (sizeErr, when it did), then the configuration's own doubts.
func startWarnings(cfg config.Config, sizeErr error) []warning {
	var out []warning
	if sizeErr != nil {
		// The watcher keeps trying, and the effective budget follows
		// the pool's real size once it answers; only the static budget
		// and the lanes stay as configured.
		out = append(out, warning{
			msg: fmt.Sprintf("cannot size from PgBouncer's pool at start; starting on the static configuration (budget %d)", cfg.Limits().Budget),
			err: sizeErr,
		})
	}
	for _, w := range cfg.Warnings() {
		out = append(out, warning{msg: "configuration: " + w})
	}
	return out
}

// version says which lanegate this is: the module version and VCS
// revision the binary was built from, when the build recorded them. It is
// what /metrics exports as lanegate_build_info.
func version() string { return metrics.ReadBuild().String() }

// healthTimeout bounds healthcheck's request: a container runtime runs it
// every few seconds and must not pile them up.
const healthTimeout = 3 * time.Second

// healthcheck asks the admin listener of the lanegate configured here
// whether it is ready, for a container's HEALTHCHECK: the image has no
// shell or curl. It sends the admin token when one is set, although
// /readyz does not need it.
func (a app) healthcheck(ctx context.Context, envFile string) error {
	cfg, err := config.Load(config.LoadOptions{EnvFile: envFile, Environ: a.environ})
	if err != nil {
		fmt.Fprintf(a.stderr, "lanegate: invalid configuration:\n%v\n", err)
		return errReported
	}
	url := "http://" + dialable(cfg.Admin.Listen) + "/readyz"
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	if cfg.Admin.Token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.Admin.Token)
	}
	// Never through an HTTP proxy from the environment: the token goes
	// to the admin listener only.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(a.stderr, "lanegate: healthcheck: %v\n", err)
		return errReported
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(a.stderr, "lanegate: healthcheck: %s answered %d: %s\n", url, resp.StatusCode, strings.TrimSpace(string(body)))
		return errReported
	}
	fmt.Fprintf(a.stdout, "%s", body)
	return nil
}

// dialable turns a listen address into one to connect to: a listener on
// every address (":9090", "0.0.0.0:9090", "[::]:9090") is reached on
// loopback.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
