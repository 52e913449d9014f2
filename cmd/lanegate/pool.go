package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/poolwatch"
)

// newReader returns the reader of the consoles cfg names, nil without
// LANEGATE_PGBOUNCER_URL.
func newReader(cfg config.Config) (*poolwatch.Reader, error) {
	if !cfg.Watched() {
		return nil, nil
	}
	r, err := poolwatch.NewReader(poolwatch.ReaderOptions{
		URLs:     cfg.PgBouncer.URLs,
		Database: cfg.PgBouncer.Database,
		User:     cfg.PgBouncer.User,
	})
	if err != nil {
		return nil, fmt.Errorf("LANEGATE_PGBOUNCER_URL: %w", err)
	}
	return r, nil
}

// startTries is how many reads of the console sizing makes at start
// before lanegate starts on LANEGATE_DB_POOL_SIZE instead: PgBouncer and
// lanegate often start together, and PgBouncer may be a moment late.
const startTries = 3

// sizeFromPool reads the console and sizes cfg from the pool (see
// config.WithPool). On failure it returns cfg unchanged with the error:
// the caller decides whether to go on without it.
func sizeFromPool(ctx context.Context, cfg config.Config, r *poolwatch.Reader) (config.Config, error) {
	var err error
	for try := range startTries {
		if try > 0 {
			select {
			case <-ctx.Done():
				return cfg, ctx.Err()
			case <-time.After(cfg.PgBouncer.Poll):
			}
		}
		var reading poolwatch.Reading
		rctx, cancel := context.WithTimeout(ctx, cfg.PgBouncer.Timeout)
		reading, err = r.Read(rctx)
		cancel()
		if err == nil {
			// On error WithPool gives cfg back as it was.
			return cfg.WithPool(poolOf(reading, cfg.PgBouncer.URLs))
		}
	}
	return cfg, fmt.Errorf("reading PgBouncer's console: %w", err)
}

// poolOf is what config.WithPool needs of a reading.
func poolOf(r poolwatch.Reading, urls []string) config.Pool {
	name := r.Pool.Database
	if r.Pool.User != "" {
		name += "/" + r.Pool.User
	}
	var hosts []string
	for _, raw := range urls {
		if u, err := url.Parse(raw); err == nil {
			hosts = append(hosts, u.Host)
		}
	}
	return config.Pool{
		Size:             r.Pool.Size,
		QueryWaitTimeout: r.Settings.QueryWaitTimeout,
		Name:             name + " at " + strings.Join(hosts, ", "),
	}
}

// resizer returns what a reload applies to a freshly loaded configuration
// so that it is sized from the pool as the running one is: the watcher's
// last reading, or nothing when it has none.
func resizer(w *poolwatch.Watcher, urls []string) func(config.Config) (config.Config, error) {
	return func(cfg config.Config) (config.Config, error) {
		if w == nil || !cfg.Watched() {
			return cfg, nil
		}
		st := w.Status()
		if st.At.IsZero() {
			return cfg, nil
		}
		return cfg.WithPool(poolOf(st.Reading, urls))
	}
}

// watch starts the pool watcher, which steers s.ctrl until ctx ends or
// stop is called; stop waits for it to give the static budget back.
func (s *server) watch(ctx context.Context, cfg config.Config) {
	if s.watcher == nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.watcher.Run(ctx)
	}()
	s.stopWatch = func() {
		cancel()
		<-done
	}
	s.log.Info("pool watcher started",
		zap.Strings("consoles", redacted(cfg.PgBouncer.URLs)),
		zap.Duration("poll", cfg.PgBouncer.Poll),
		zap.Bool("follow", cfg.PgBouncer.Follow))
}

func redacted(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = poolwatch.Redact(u)
	}
	return out
}
