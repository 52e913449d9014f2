package main

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/proxy"
)

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
	if changed := restartOnly(started, cfg); len(changed) > 0 {
		log.Warn("these settings change only on restart; the running values stay", zap.Strings("variables", changed))
	}
	log.Info("configuration reloaded", zap.String("mode", string(h.Mode())), zap.Int("budget", cfg.Limits().Budget))
	return cfg, nil
}

// restartOnly names the variables that differ between a and b but are
// fixed once lanegate runs.
func restartOnly(a, b config.Config) []string {
	fields := []struct {
		name string
		a, b any
	}{
		{"LANEGATE_LISTEN", a.Server.Listen, b.Server.Listen},
		{"LANEGATE_TLS_CERT_FILE", a.Server.TLSCertFile, b.Server.TLSCertFile},
		{"LANEGATE_TLS_KEY_FILE", a.Server.TLSKeyFile, b.Server.TLSKeyFile},
		{"LANEGATE_TRUSTED_PROXIES", fmt.Sprint(a.Server.TrustedProxies), fmt.Sprint(b.Server.TrustedProxies)},
		{"LANEGATE_READ_HEADER_TIMEOUT", a.Server.ReadHeaderTimeout, b.Server.ReadHeaderTimeout},
		{"LANEGATE_IDLE_TIMEOUT", a.Server.IdleTimeout, b.Server.IdleTimeout},
		{"LANEGATE_MAX_HEADER_BYTES", a.Server.MaxHeaderBytes, b.Server.MaxHeaderBytes},
		{"LANEGATE_MAX_CONNS", a.Server.MaxConns, b.Server.MaxConns},
		{"LANEGATE_MAX_BODY_BYTES", a.Server.MaxBodyBytes, b.Server.MaxBodyBytes},
		{"LANEGATE_BUFFER_BODY_BYTES", a.Server.BufferBodyBytes, b.Server.BufferBodyBytes},
		{"LANEGATE_SHUTDOWN_TIMEOUT", a.Server.ShutdownTimeout, b.Server.ShutdownTimeout},
		{"LANEGATE_UPSTREAM", a.Upstream.URL.String(), b.Upstream.URL.String()},
		{"LANEGATE_UPSTREAM_DIAL_TIMEOUT", a.Upstream.DialTimeout, b.Upstream.DialTimeout},
		{"LANEGATE_UPSTREAM_RESPONSE_HEADER_TIMEOUT", a.Upstream.ResponseHeaderTimeout, b.Upstream.ResponseHeaderTimeout},
		{"LANEGATE_UPSTREAM_IDLE_TIMEOUT", a.Upstream.IdleTimeout, b.Upstream.IdleTimeout},
		{"LANEGATE_UPSTREAM_STALL_TIMEOUT", a.Upstream.StallTimeout, b.Upstream.StallTimeout},
		{"LANEGATE_UPSTREAM_TIMEOUT_HOLD", a.Upstream.TimeoutHold, b.Upstream.TimeoutHold},
		{"LANEGATE_ADMIN_LISTEN", a.Admin.Listen, b.Admin.Listen},
		{"LANEGATE_ADMIN_TOKEN", a.Admin.Token, b.Admin.Token},
		{"LANEGATE_LOG_FORMAT", a.Log.Format, b.Log.Format},
		{"LANEGATE_LOG_LEVEL", a.Log.Level, b.Log.Level},
		{"LANEGATE_ACCESS_LOG", a.Log.Access, b.Log.Access},
		{"LANEGATE_LOG_REDACT_PATHS", fmt.Sprint(a.Log.RedactPaths), fmt.Sprint(b.Log.RedactPaths)},
	}
	var changed []string
	for _, f := range fields {
		if f.a != f.b {
			changed = append(changed, f.name)
		}
	}
	return changed
}
