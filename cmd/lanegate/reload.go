package main

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/proxy"
)

// reloadConfig re-reads the env file, sizes it from the pool with resize
// as the running configuration was, and applies what can change without a
// restart: limits, routes and mode. It returns the configuration now
// applied, or an error, logged, when the new one is refused and applied
// stays in force. record is told the outcome before it is logged, so that
// whoever reads the log line finds the outcome recorded already.
//
// The mode is changed only when the file's value changed since the last
// load, so an operator's emergency PUT /admission survives an unrelated
// reload. Everything else needs a restart; each changed variable is named.
func (a app) reloadConfig(started, applied config.Config, envFile string, resize func(config.Config) (config.Config, error),
	ctrl *admission.Controller, h *proxy.Handler, log *zap.Logger, record func(error)) (config.Config, error) {
	cfg, err := config.Load(config.LoadOptions{EnvFile: envFile, Environ: a.environ})
	if err == nil {
		// Sized from the pool as at start, or the pool size would fall
		// back to its default on every reload.
		cfg, err = resize(cfg)
	}
	if err != nil {
		err = fmt.Errorf("invalid configuration: %w", err)
		record(err)
		log.Error("reload refused: invalid configuration; keeping the running one", zap.Error(err))
		return applied, err
	}
	rules := routeRules(cfg)
	if _, err := proxy.NewClassifier(rules); err != nil {
		err = fmt.Errorf("routes: %w", err)
		record(err)
		log.Error("reload refused", zap.Error(err))
		return applied, err
	}
	if err := ctrl.Reconfigure(cfg.Limits()); err != nil {
		err = fmt.Errorf("limits: %w", err)
		record(err)
		log.Error("reload refused", zap.Error(err))
		return applied, err
	}
	h.SetRules(rules) // cannot fail: checked above
	if cfg.Admission.Mode != applied.Admission.Mode {
		h.SetMode(cfg.Admission.Mode)
	}
	if changed := config.RestartOnly(started, cfg); len(changed) > 0 {
		log.Warn("these settings change only on restart; the running values stay", zap.Strings("variables", changed))
	}
	for _, w := range cfg.Warnings() {
		// A reload can make a doubtful combination as a start can (a hold
		// raised past query_wait_timeout); it is said the same way.
		log.Warn("configuration: " + w)
	}
	record(nil)
	log.Info("configuration reloaded", zap.String("mode", string(h.Mode())), zap.Int("budget", cfg.Limits().Budget))
	return cfg, nil
}
