package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/proxy"
	"github.com/lanegate/lanegate/session"
)

// listenAddrs are the addresses actually bound, which differ from the
// configured ones when a port is 0.
type listenAddrs struct {
	Proxy, Admin string
}

func (a app) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lanegate", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	envFile := fs.String("env-file", "", "dotenv `file` read before the environment (the environment wins)")
	markdown := fs.Bool("markdown", false, "with config: print the reference table of every variable as Markdown")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lanegate [--env-file FILE] [serve | config [--markdown]]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return helpOrReported(err)
	}
	cmd := "serve"
	rest := fs.Args()
	if len(rest) > 0 {
		cmd, rest = rest[0], rest[1:]
	}
	// Flags may follow the command too: lanegate config --markdown.
	if err := fs.Parse(rest); err != nil {
		return helpOrReported(err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errReported
	}
	switch cmd {
	case "config":
		return a.printConfig(*envFile, *markdown)
	case "serve":
		cfg, err := config.Load(config.LoadOptions{EnvFile: *envFile, Environ: a.environ})
		if err != nil {
			fmt.Fprintf(a.stderr, "lanegate: invalid configuration:\n%v\n", err)
			return errReported
		}
		return a.serve(ctx, cfg, *envFile)
	default:
		fs.Usage()
		return errReported
	}
}

// helpOrReported turns a flag parsing error, which the flag set has
// already explained with the usage, into run's result: asking for help
// with -h or -help succeeds.
func helpOrReported(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return errReported
}

// printConfig prints the effective configuration. When the configuration
// is invalid it prints nothing on stdout and reports every problem on
// stderr.
func (a app) printConfig(envFile string, markdown bool) error {
	if markdown {
		fmt.Fprint(a.stdout, config.MarkdownTable())
		return nil
	}
	cfg, err := config.Load(config.LoadOptions{EnvFile: envFile, Environ: a.environ})
	if err != nil {
		fmt.Fprintf(a.stderr, "lanegate: invalid configuration:\n%v\n", err)
		return errReported
	}
	return cfg.Print(a.stdout)
}

func newLogger(c config.Log, w zapcore.WriteSyncer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.MillisDurationEncoder
	enc := zapcore.NewJSONEncoder(ec)
	if c.Format == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	// No sampling: an access log that drops lines under load lies exactly
	// when it is needed.
	return zap.New(zapcore.NewCore(enc, w, level), zap.ErrorOutput(w)), nil
}

// serve runs the proxy and admin servers until ctx ends, then shuts down
// gracefully.
func (a app) serve(ctx context.Context, cfg config.Config, envFile string) error {
	log, err := newLogger(cfg.Log, zapcore.AddSync(a.stderr))
	if err != nil {
		return err
	}
	defer log.Sync()

	ctrl, err := admission.New(cfg.Limits())
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := proxy.NewMetrics(reg, ctrl)
	if err != nil {
		return err
	}
	sessions, err := newSessions(cfg.Session, log.Named("session"), metrics, reg)
	if err != nil {
		return err
	}
	opts := handlerOptions(cfg)
	if opts.WaitingRoom {
		if opts.Tickets, err = ticketKeyring(cfg, log); err != nil {
			return err
		}
	}
	adminOpts := proxy.AdminOptions{Token: cfg.Admin.Token, Gatherer: reg}
	if sessions != nil {
		defer sessions.Store().Close()
		opts.Sessions = sessions
		adminOpts.Sessions, adminOpts.SessionStore = sessions, cfg.Session.Store
	}
	h, err := proxy.New(ctrl, opts, log.Named("proxy"), metrics)
	if err != nil {
		return err
	}
	defer h.Close()
	admin := proxy.NewAdmin(h, ctrl, adminOpts, log.Named("admin"))

	errLog := zap.NewStdLog(log.Named("http"))
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    headerLimit(cfg.Server.MaxHeaderBytes),
		ErrorLog:          errLog,
	}
	adminSrv := &http.Server{
		Handler:           admin,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          errLog,
	}
	if cfg.Server.TLSCertFile != "" {
		// Loaded here, not by ServeTLS, so that a bad certificate fails
		// the start, naming its variables, before anything is announced.
		cert, err := tls.LoadX509KeyPair(cfg.Server.TLSCertFile, cfg.Server.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("TLS certificate %s and key %s (LANEGATE_TLS_CERT_FILE, LANEGATE_TLS_KEY_FILE): %w",
				cfg.Server.TLSCertFile, cfg.Server.TLSKeyFile, err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen %s (LANEGATE_LISTEN): %w", cfg.Server.Listen, err)
	}
	adminLn, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen %s (LANEGATE_ADMIN_LISTEN): %w", cfg.Admin.Listen, err)
	}
	// The admin listener is not limited: an operator must reach /status
	// when clients hold every connection.
	limited := proxy.NewLimitListener(ln, cfg.Server.MaxConns)
	if err := limited.Register(reg); err != nil {
		ln.Close()
		adminLn.Close()
		return fmt.Errorf("listener metrics: %w", err)
	}
	ln = limited

	errc := make(chan error, 2)
	go func() {
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		errc <- err
	}()
	go func() { errc <- adminSrv.Serve(adminLn) }()

	limits := cfg.Limits()
	log.Info("lanegate started",
		zap.String("listen", ln.Addr().String()),
		zap.String("admin", adminLn.Addr().String()),
		zap.String("upstream", cfg.Upstream.URL.String()),
		zap.String("mode", string(cfg.Admission.Mode)),
		zap.Int("budget", limits.Budget),
		zap.Bool("tls", cfg.Server.TLSCertFile != ""),
		zap.String("session_store", cfg.Session.Store),
	)
	for _, w := range cfg.Warnings() {
		log.Warn("configuration: " + w)
	}
	if a.started != nil {
		a.started(listenAddrs{Proxy: ln.Addr().String(), Admin: adminLn.Addr().String()})
	}

	applied := cfg
	var serveErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-errc:
			serveErr = fmt.Errorf("server stopped: %w", err)
			break loop
		case <-a.reload:
			next, err := a.reloadConfig(cfg, applied, envFile, ctrl, h, log)
			rs := proxy.ReloadStatus{At: time.Now().UTC(), OK: err == nil}
			if err != nil {
				rs.Error = err.Error()
			} else {
				applied = next
			}
			admin.SetReload(rs)
		}
	}

	log.Info("shutting down", zap.Duration("timeout", cfg.Server.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	done := make(chan error, 1)
	// Readiness fails first, so a load balancer stops sending here.
	admin.SetDraining()
	// Shutdown closes the listeners at once and then waits for requests in
	// flight; Close answers the queued ones with 503 and Retry-After rather
	// than letting them wait out the drain.
	go func() { done <- srv.Shutdown(sctx) }()
	ctrl.Close()
	if err := <-done; err != nil {
		log.Warn("drain timed out; closing remaining connections", zap.Error(err))
		srv.Close()
	}
	adminSrv.Shutdown(sctx)
	adminSrv.Close()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// headerLimit is the http.Server.MaxHeaderBytes that refuses a request
// head (request line and headers) larger than n bytes: Go's server reads
// 4096 bytes more than MaxHeaderBytes before answering 431.
func headerLimit(n int) int { return max(n-4096, 1) }

// reloadConfig re-reads the env file and applies what can change without a
// restart: limits, routes and mode. It returns the configuration now
// applied, or an error, logged, when the new one is refused and applied
// stays in force.
//
// The mode is changed only when the file's value changed since the last
// load, so an operator's emergency PUT /admission survives an unrelated
// reload. Everything else needs a restart; each changed variable is named.
func (a app) reloadConfig(started, applied config.Config, envFile string, ctrl *admission.Controller, h *proxy.Handler, log *zap.Logger) (config.Config, error) {
	cfg, err := config.Load(config.LoadOptions{EnvFile: envFile, Environ: a.environ})
	if err != nil {
		log.Error("reload refused: invalid configuration; keeping the running one", zap.Error(err))
		return applied, fmt.Errorf("invalid configuration: %w", err)
	}
	rules := routeRules(cfg)
	if _, err := proxy.NewClassifier(rules); err != nil {
		log.Error("reload refused: routes", zap.Error(err))
		return applied, fmt.Errorf("routes: %w", err)
	}
	if err := ctrl.Reconfigure(cfg.Limits()); err != nil {
		log.Error("reload refused: limits", zap.Error(err))
		return applied, fmt.Errorf("limits: %w", err)
	}
	h.SetRules(rules) // cannot fail: checked above
	if cfg.Admission.Mode != applied.Admission.Mode {
		h.SetMode(cfg.Admission.Mode)
	}
	if changed := config.RestartOnly(started, cfg); len(changed) > 0 {
		log.Warn("these settings change only on restart; the running values stay", zap.Strings("variables", changed))
	}
	log.Info("configuration reloaded", zap.String("mode", string(h.Mode())), zap.Int("budget", cfg.Limits().Budget))
	return cfg, nil
}

func routeRules(cfg config.Config) proxy.Rules {
	return proxy.Rules{Login: cfg.Routes.LoginPaths, Export: cfg.Routes.ExportPaths, Bypass: cfg.Routes.BypassPaths}
}

func handlerOptions(cfg config.Config) proxy.Options {
	return proxy.Options{
		Upstream:              cfg.Upstream.URL,
		TrustedProxies:        cfg.Server.TrustedProxies,
		Rules:                 routeRules(cfg),
		MaxBodyBytes:          cfg.Server.MaxBodyBytes,
		BodyReadTimeout:       cfg.Server.BodyReadTimeout,
		BufferBodyBytes:       cfg.Server.BufferBodyBytes,
		DialTimeout:           cfg.Upstream.DialTimeout,
		ResponseHeaderTimeout: cfg.Upstream.ResponseHeaderTimeout,
		IdleConns:             cfg.Limits().Budget,
		UpstreamIdleTimeout:   cfg.Upstream.IdleTimeout,
		StallTimeout:          cfg.Upstream.StallTimeout,
		HoldAfterTimeout:      cfg.Upstream.TimeoutHold,
		AccessLog:             cfg.Log.Access,
		RedactPaths:           cfg.Log.RedactPaths,
		Mode:                  cfg.Admission.Mode,
		SessionCookie:         cfg.Session.Cookie,
		LoginRequired:         cfg.Routes.LoginRequiredPaths,
		LoginURL:              cfg.Routes.LoginURL,
		WaitingRoom:           cfg.Admission.WaitingRoom,
	}
}

// ticketKeyring returns the keyring that signs waiting-room tickets:
// LANEGATE_TICKET_SECRET, else LANEGATE_IDENTITY_SECRET, else a secret
// made now, good for this process only.
func ticketKeyring(cfg config.Config, log *zap.Logger) (*session.Keyring, error) {
	for _, v := range []struct{ name, spec string }{
		{"LANEGATE_TICKET_SECRET", cfg.Admission.TicketSecret},
		{"LANEGATE_IDENTITY_SECRET", cfg.Session.IdentitySecret},
	} {
		if v.spec != "" {
			kr, err := session.ParseKeyring(v.spec)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
			return kr, nil
		}
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("making a ticket secret: %w", err)
	}
	log.Info("waiting-room tickets signed with a secret made at start: they do not survive a restart or cross replicas (set LANEGATE_TICKET_SECRET)")
	return session.ParseKeyring("local:" + hex.EncodeToString(b[:]))
}

// newSessions builds the session cache the configuration asks for, or nil
// when LANEGATE_SESSION_STORE=off. A Redis that is down does not stop the
// start: the cache fails open and fills once Redis answers.
func newSessions(c config.Session, log *zap.Logger, metrics *proxy.Metrics, reg prometheus.Registerer) (*session.Cache, error) {
	var store session.Store
	switch c.Store {
	case config.StoreOff:
		return nil, nil
	case config.StoreMemory:
		m, err := session.NewMemory(c.MaxEntries, nil)
		if err != nil {
			return nil, fmt.Errorf("LANEGATE_SESSION_MAX_ENTRIES: %w", err)
		}
		store = m
	case config.StoreRedis:
		r, err := session.NewRedis(session.RedisOptions{URL: c.RedisURL, Timeout: c.RedisTimeout, PoolSize: c.RedisPoolSize})
		if err != nil {
			// The URL may hold a password: the error names the variable,
			// and session.NewRedis never repeats the URL.
			return nil, fmt.Errorf("LANEGATE_REDIS_URL: %w", err)
		}
		store = r
	default:
		return nil, fmt.Errorf("LANEGATE_SESSION_STORE=%q: want off, memory or redis", c.Store)
	}
	kr, err := session.ParseKeyring(c.IdentitySecret)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("LANEGATE_IDENTITY_SECRET: %w", err)
	}
	cache, err := session.NewCache(session.CacheOptions{
		Store: store, Keyring: kr, Cookie: c.Cookie, TTL: c.TTL, CoalesceWait: c.CoalesceWait,
		Log: log, Observer: metrics,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	if err := metrics.RegisterSessions(reg, cache); err != nil {
		store.Close()
		return nil, fmt.Errorf("session metrics: %w", err)
	}
	return cache, nil
}
