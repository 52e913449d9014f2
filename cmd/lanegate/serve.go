package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/metrics"
	"github.com/lanegate/lanegate/poolwatch"
	"github.com/lanegate/lanegate/proxy"
	"github.com/lanegate/lanegate/session"
)

// serve runs the proxy and admin servers until ctx ends, then shuts down
// gracefully.
func (a app) serve(ctx context.Context, cfg config.Config, envFile string) error {
	log, err := newLogger(cfg.Log, zapcore.AddSync(a.stderr))
	if err != nil {
		return err
	}
	defer log.Sync()

	reader, err := newReader(cfg)
	if err != nil {
		return err
	}
	var sizeErr error // warned of once started (see startWarnings)
	if reader != nil {
		cfg, sizeErr = sizeFromPool(ctx, cfg, reader)
	}

	s, err := build(cfg, log, reader) // closes reader if it fails
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.listen(cfg); err != nil {
		return err
	}
	// The fleet's coordinator and the pool watcher run until shutdown has
	// drained, not until the signal: a replica leaving the fleet, or a
	// watcher lifting its budget, while requests are still in flight or
	// queued would let more into the pool than it can hold.
	if s.fleet != nil {
		s.fleet.start(context.Background(), log, memberID(cfg))
	}
	errc := s.start()
	s.watch(context.Background(), cfg)
	s.announce(cfg, envFile, sizeErr)
	if a.started != nil {
		a.started(listenAddrs{Proxy: s.ln.Addr().String(), Admin: s.adminLn.Addr().String()})
	}
	serveErr := a.until(ctx, errc, s, cfg, envFile)
	s.shutdown(cfg.Server.ShutdownTimeout)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// server is everything serve builds from the configuration: the
// controller, the data plane, the admin server and their listeners.
type server struct {
	log      *zap.Logger
	ctrl     *admission.Controller
	reg      *prometheus.Registry
	sessions *session.Cache // nil when the cache is off
	handler  *proxy.Handler
	admin    *admin.Server
	// reader and watcher are the pool watcher's, nil without
	// LANEGATE_PGBOUNCER_URL; stopWatch stops a running watcher.
	reader    *poolwatch.Reader
	watcher   *poolwatch.Watcher
	stopWatch func()
	// fleet is fleet mode's, nil unless LANEGATE_FLEET=redis.
	fleet *fleetPart

	srv, adminSrv *http.Server
	ln, adminLn   net.Listener
}

// build wires the parts together. Nothing listens yet.
func build(cfg config.Config, log *zap.Logger, reader *poolwatch.Reader) (_ *server, err error) {
	s := &server{log: log, reader: reader}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.ctrl, err = admission.New(cfg.Limits()); err != nil {
		return nil, err
	}
	s.reg = prometheus.NewRegistry()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(s.reg, s.ctrl)
	if err != nil {
		return nil, err
	}
	if s.sessions, err = newSessions(cfg.Session, log.Named("session"), m, s.reg); err != nil {
		return nil, err
	}
	opts := handlerOptions(cfg)
	if opts.WaitingRoom {
		if opts.Tickets, err = ticketKeyring(cfg, log); err != nil {
			return nil, err
		}
	}
	adminOpts := admin.Options{Token: cfg.Admin.Token, Gatherer: s.reg, Upstream: cfg.Upstream.URL}
	if s.fleet, err = newFleet(cfg, s.ctrl, log.Named("fleet")); err != nil {
		return nil, err
	}
	if s.fleet != nil {
		if err := m.RegisterFleet(s.reg, s.fleet); err != nil {
			return nil, err
		}
		adminOpts.Fleet = s.fleet
		opts.FleetLine = s.fleet.line
	}
	if reader != nil {
		// In a fleet the watcher narrows the fleet's budget, which the
		// leases then share; alone, this controller's.
		var target poolwatch.Target = s.ctrl
		if s.fleet != nil {
			target = poolTarget{s.fleet}
		}
		s.watcher = poolwatch.New(reader, target, poolwatch.Options{
			Poll:    cfg.PgBouncer.Poll,
			Timeout: cfg.PgBouncer.Timeout,
			Stale:   cfg.PgBouncer.Stale,
			Follow:  cfg.PgBouncer.Follow,
			Log:     log.Named("pool"),
		})
		if err := m.RegisterPool(s.reg, s.watcher); err != nil {
			return nil, err
		}
		adminOpts.Pool = s.watcher
	}
	if s.sessions != nil {
		opts.Sessions = s.sessions
		adminOpts.Sessions, adminOpts.SessionStore = s.sessions, cfg.Session.Store
	}
	if s.handler, err = proxy.New(s.ctrl, opts, log.Named("proxy"), m); err != nil {
		return nil, err
	}
	s.admin = admin.New(s.handler, s.ctrl, adminOpts, log.Named("admin"))
	return s, s.servers(cfg)
}

// servers makes the two HTTP servers.
func (s *server) servers(cfg config.Config) error {
	errLog := zap.NewStdLog(s.log.Named("http"))
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    headerLimit(cfg.Server.MaxHeaderBytes),
		ErrorLog:          errLog,
	}
	s.adminSrv = &http.Server{
		Handler:           s.admin,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          errLog,
	}
	if cfg.Server.TLSCertFile == "" {
		return nil
	}
	// Loaded here, not by ServeTLS, so that a bad certificate fails the
	// start, naming its variables, before anything is announced.
	cert, err := tls.LoadX509KeyPair(cfg.Server.TLSCertFile, cfg.Server.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s and key %s (LANEGATE_TLS_CERT_FILE, LANEGATE_TLS_KEY_FILE): %w",
			cfg.Server.TLSCertFile, cfg.Server.TLSKeyFile, err)
	}
	s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	return nil
}

// listen binds both listeners. The client listener is limited to
// LANEGATE_MAX_CONNS and LANEGATE_CLIENT_SEND_TIMEOUT; the admin listener
// is not, so that an operator reaches /status when clients hold every
// connection.
func (s *server) listen(cfg config.Config) error {
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen %s (LANEGATE_LISTEN): %w", cfg.Server.Listen, err)
	}
	limited := proxy.NewListener(ln, proxy.ListenerOptions{MaxConns: cfg.Server.MaxConns, SendTimeout: cfg.Server.ClientSendTimeout})
	s.ln = limited
	if err := limited.Register(s.reg); err != nil {
		return fmt.Errorf("listener metrics: %w", err)
	}
	if s.adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
		return fmt.Errorf("listen %s (LANEGATE_ADMIN_LISTEN): %w", cfg.Admin.Listen, err)
	}
	return nil
}

// start serves both listeners; each server's end is sent on the channel.
func (s *server) start() <-chan error {
	errc := make(chan error, 2)
	go func() {
		if s.srv.TLSConfig != nil {
			errc <- s.srv.ServeTLS(s.ln, "", "")
			return
		}
		errc <- s.srv.Serve(s.ln)
	}()
	go func() { errc <- s.adminSrv.Serve(s.adminLn) }()
	return errc
}

// announce logs the start, with the env file read ("" for none), and the
// warnings lanegate config prints too.
func (s *server) announce(cfg config.Config, envFile string, sizeErr error) {
	s.log.Info("lanegate started",
		zap.String("listen", s.ln.Addr().String()),
		zap.String("admin", s.adminLn.Addr().String()),
		zap.String("env_file", envFile),
		zap.String("upstream", cfg.Upstream.URL.String()),
		zap.String("mode", string(cfg.Admission.Mode)),
		zap.Int("budget", cfg.Limits().Budget),
		zap.Bool("tls", cfg.Server.TLSCertFile != ""),
		zap.String("session_store", cfg.Session.Store),
	)
	for _, w := range startWarnings(cfg, sizeErr) {
		s.log.Warn(w.msg, zap.Error(w.err)) // no field when err is nil
	}
}

// until serves until ctx ends or a server stops, applying reloads
// meanwhile. It returns why a server stopped, or nil.
func (a app) until(ctx context.Context, errc <-chan error, s *server, cfg config.Config, envFile string) error {
	applied := cfg
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("server stopped: %w", err)
		case <-a.reload:
			next, err := a.reloadConfig(cfg, applied, envFile, resizer(s.watcher, cfg.PgBouncer.URLs), s.ctrl, s.handler, s.log,
				func(err error) {
					rs := admin.ReloadStatus{At: time.Now().UTC(), OK: err == nil}
					if err != nil {
						rs.Error = err.Error()
					}
					s.admin.SetReload(rs)
				})
			if err == nil {
				applied = next
				if s.fleet != nil {
					s.fleet.setLimits(next)
				}
			}
		}
	}
}

// shutdown drains: readiness fails first, so a load balancer stops sending
// here; the client listener closes and requests in flight get up to
// timeout to finish, while queued ones are answered 503 with Retry-After at
// once rather than waiting out the drain.
func (s *server) shutdown(timeout time.Duration) {
	s.log.Info("shutting down", zap.Duration("timeout", timeout))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s.admin.SetDraining()
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(ctx) }()
	s.ctrl.Close()
	if err := <-done; err != nil {
		s.log.Warn("drain timed out; closing remaining connections", zap.Error(err))
		s.srv.Close()
	}
	if s.stopWatch != nil {
		s.stopWatch()
		s.stopWatch = nil
	}
	if s.fleet != nil {
		// Drained: leave, so the others take this replica's share now
		// rather than when its lease runs out.
		s.fleet.close()
		s.fleet = nil
	}
	s.adminSrv.Shutdown(ctx)
	s.adminSrv.Close()
}

// close releases what build and listen made: listeners not yet served,
// upstream connections and the session store.
func (s *server) close() {
	for _, ln := range []net.Listener{s.ln, s.adminLn} {
		if ln != nil {
			ln.Close() // after Shutdown: already closed, harmless
		}
	}
	if s.handler != nil {
		s.handler.Close()
	}
	if s.sessions != nil {
		s.sessions.Store().Close()
	}
	if s.stopWatch != nil {
		s.stopWatch()
	}
	if s.reader != nil {
		s.reader.Close()
	}
	if s.fleet != nil {
		s.fleet.close()
	}
}

// headerLimit is the http.Server.MaxHeaderBytes that refuses a request
// head (request line and headers) larger than n bytes: Go's server reads
// 4096 bytes more than MaxHeaderBytes before answering 431.
func headerLimit(n int) int { return max(n-4096, 1) }
