package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/fleet"
	"github.com/lanegate/lanegate/session"
)

// fleetPart is fleet mode's wiring: the Redis client, the leases and the
// coordinator, and the fleet's limits as the last applied configuration
// has them.
type fleetPart struct {
	client redis.UniversalClient
	*fleet.Leases
	*fleet.Coordinator
	limits atomic.Pointer[fleet.Limits]
	stop   func()
}

// memberID is this replica's name in the fleet: LANEGATE_INSTANCE_ID, or
// the host name and process id, unique among processes on one host and
// readable on a status page.
func memberID(cfg config.Config) string {
	if id := cfg.Fleet.InstanceID; id != "" {
		return id
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "lanegate"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

// newFleet builds fleet mode for cfg and ctrl, nil when LANEGATE_FLEET is
// off. Nothing runs until start.
func newFleet(cfg config.Config, ctrl fleet.Target, log *zap.Logger) (*fleetPart, error) {
	if cfg.Fleet.Mode != config.FleetRedis {
		return nil, nil
	}
	// A renewal may take up to one renewal interval; a request never
	// waits for it.
	client, err := session.NewRedisClient(session.RedisOptions{
		URL: cfg.Session.RedisURL, Timeout: cfg.Fleet.Renew, PoolSize: 2,
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: LANEGATE_REDIS_URL: %w", err)
	}
	leases, err := fleet.NewLeases(client, cfg.Fleet.Name, cfg.Fleet.Lease, clockwork.NewRealClock())
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	f := &fleetPart{client: client, Leases: leases}
	f.setLimits(cfg)
	f.Coordinator = fleet.NewCoordinator(leases, ctrl, fleet.CoordinatorOptions{
		Member:  memberID(cfg),
		Limits:  func() fleet.Limits { return *f.limits.Load() },
		Renew:   cfg.Fleet.Renew,
		Timeout: cfg.Fleet.Renew,
		Log:     log,
	})
	return f, nil
}

// setLimits makes cfg's limits the fleet's: what one lanegate would admit
// alone, the fleet shares.
func (f *fleetPart) setLimits(cfg config.Config) {
	lim := fleet.LimitsOf(cfg.Limits())
	f.limits.Store(&lim)
}

// start runs the coordinator until stop, which leaves the fleet.
func (f *fleetPart) start(ctx context.Context, log *zap.Logger, member string) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Coordinator.Run(ctx)
	}()
	f.stop = func() {
		cancel()
		<-done
	}
	log.Info("fleet: joined", zap.String("member", member))
}

// close stops the coordinator, if it runs, and closes the client.
func (f *fleetPart) close() {
	if f.stop != nil {
		f.stop()
		f.stop = nil
	}
	f.client.Close()
}
