package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
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
	// line is the login line the fleet shares.
	line *fleet.Line
	// limits are the configuration's; ceiling is the pool watcher's
	// effective budget for the whole fleet, negative for none.
	limits  atomic.Pointer[admission.Limits]
	ceiling atomic.Int64
	ctrl    *admission.Controller
	stop    func()
}

// fallbackKept is how many leases the fleet keeps a lost replica's
// fallback share counted as held: 30 s with the default 3 s lease.
const fallbackKept = 10

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
	// Containers on one host's network share its name and often run as
	// pid 1: the suffix keeps two replicas from sharing one lease.
	var b [3]byte
	rand.Read(b[:])
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

// newFleet builds fleet mode for cfg and ctrl, nil when LANEGATE_FLEET is
// off. Nothing runs until start.
func newFleet(cfg config.Config, ctrl *admission.Controller, log *zap.Logger) (*fleetPart, error) {
	if cfg.Fleet.Mode != config.FleetRedis {
		return nil, nil
	}
	// A renewal may take up to one renewal interval; a request never
	// waits for it. Logins do wait for their one arrival step, so the
	// pool has room for a burst of them besides renewals and /status.
	client, err := session.NewRedisClient(session.RedisOptions{
		URL: cfg.Session.RedisURL, Timeout: cfg.Fleet.Renew, PoolSize: 16,
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: LANEGATE_REDIS_URL: %w", err)
	}
	// A replica cut off from Redis admits under its fallback share once
	// its lease ends; the fleet keeps that share counted for it a while,
	// so a partition that heals within it never takes the fleet past its
	// budget. A replica that died frees it after as long.
	leases, err := fleet.NewLeases(client, cfg.Fleet.Name, cfg.Fleet.Lease, clockwork.NewRealClock(),
		fleet.KeepFallback(fallbackKept*cfg.Fleet.Lease))
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	member := memberID(cfg)
	f := &fleetPart{client: client, Leases: leases, ctrl: ctrl}
	f.ceiling.Store(-1)
	f.setLimits(cfg)
	f.line, err = fleet.NewLine(client, cfg.Fleet.Name, member, fleet.LineOptions{
		// A login waits on Redis no longer than a renewal may take; past
		// that it ranks in this replica's line.
		Timeout: cfg.Fleet.Renew,
		Hold:    ctrl.LoginHold,
		Up:      f.up,
		Log:     log,
	})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	f.Coordinator = fleet.NewCoordinator(leases, ctrl, fleet.CoordinatorOptions{
		Member:  member,
		Limits:  f.fleetLimits,
		Renew:   cfg.Fleet.Renew,
		Timeout: cfg.Fleet.Renew,
		Log:     log,
	})
	return f, nil
}

// up reports whether the fleet answers: the lease is renewed. While it is
// not, logins rank in this replica's line without trying Redis.
func (f *fleetPart) up() bool { return f.Coordinator.Status().State == fleet.StateOK }

// LineStats are the shared login line's counters, for metrics.
func (f *fleetPart) LineStats() fleet.LineStats { return f.line.Stats() }

// setLimits makes cfg's limits the fleet's: what one lanegate would admit
// alone, the fleet shares.
func (f *fleetPart) setLimits(cfg config.Config) {
	lim := cfg.Limits()
	f.limits.Store(&lim)
}

// fleetLimits are the limits the fleet shares now: the configuration's,
// narrowed to the pool watcher's effective budget. A fleet's budget is at
// least one slot, so the watcher's floor of zero is one here.
func (f *fleetPart) fleetLimits() fleet.Limits {
	lim := *f.limits.Load()
	if n := f.ceiling.Load(); n >= 0 {
		lim = lim.Narrowed(max(int(n), 1))
	}
	return fleet.LimitsOf(lim)
}

// poolTarget is what the pool watcher steers in fleet mode: the fleet's
// budget, not this replica's, and the fleet's requests in flight, all of
// which are lanegate's and none the pool's "others".
type poolTarget struct{ f *fleetPart }

func (p poolTarget) Constrain(n int)   { p.f.ceiling.Store(int64(n)) }
func (p poolTarget) StaticBudget() int { return p.f.limits.Load().Budget }
func (p poolTarget) InFlight() int     { return p.f.ctrl.InFlight() + p.f.OthersInFlight() }

// start runs the coordinator until stop, which leaves the fleet. The
// controller admits nothing from here until the first grant: serving
// starts right after, and the coordinator's goroutine may not have run.
func (f *fleetPart) start(ctx context.Context, log *zap.Logger, member string) {
	f.ctrl.SetShare(&admission.Share{Budget: -1})
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { f.Coordinator.Run(ctx) })
	wg.Go(func() { f.line.Run(ctx) })
	f.stop = func() {
		cancel()
		wg.Wait()
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
