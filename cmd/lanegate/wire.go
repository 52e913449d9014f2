package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/metrics"
	"github.com/lanegate/lanegate/proxy"
	"github.com/lanegate/lanegate/session"
)

func routeRules(cfg config.Config) proxy.Rules {
	return proxy.Rules{Login: cfg.Routes.LoginPaths, Export: cfg.Routes.ExportPaths, Bypass: cfg.Routes.BypassPaths}
}

func handlerOptions(cfg config.Config) proxy.Options {
	return proxy.Options{
		Upstream:                 cfg.Upstream.URL,
		TrustedProxies:           cfg.Server.TrustedProxies,
		Rules:                    routeRules(cfg),
		MaxBodyBytes:             cfg.Server.MaxBodyBytes,
		BodyReadTimeout:          cfg.Server.BodyReadTimeout,
		BufferBodyBytes:          cfg.Server.BufferBodyBytes,
		BufferBodyTotalBytes:     cfg.Server.BufferBodyTotalBytes,
		DialTimeout:              cfg.Upstream.DialTimeout,
		ResponseHeaderTimeout:    cfg.Upstream.ResponseHeaderTimeout,
		IdleConns:                cfg.Limits().Budget,
		UpstreamIdleTimeout:      cfg.Upstream.IdleTimeout,
		StallTimeout:             cfg.Upstream.StallTimeout,
		HoldAfterTimeout:         cfg.Upstream.TimeoutHold,
		ResponseBufferBytes:      cfg.Upstream.ResponseBufferBytes,
		ResponseBufferTotalBytes: cfg.Upstream.ResponseBufferTotalBytes,
		AccessLog:                cfg.Log.Access,
		RedactPaths:              cfg.Log.RedactPaths,
		Mode:                     cfg.Admission.Mode,
		SessionCookie:            cfg.Session.Cookie,
		LoginRequired:            cfg.Routes.LoginRequiredPaths,
		LoginURL:                 cfg.Routes.LoginURL,
		WaitingRoom:              cfg.Admission.WaitingRoom,
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
func newSessions(c config.Session, log *zap.Logger, m *metrics.Registry, reg prometheus.Registerer) (*session.Cache, error) {
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
		Log: log, Observer: m,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	if err := m.RegisterSessions(reg, cache); err != nil {
		store.Close()
		return nil, fmt.Errorf("session metrics: %w", err)
	}
	return cache, nil
}
