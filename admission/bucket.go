package admission

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// buckets paces logins: one bucket for all clients and, when configured, one
// per client address kept in a bounded LRU so a spray of addresses cannot
// grow memory without bound.
type buckets struct {
	global *rate.Limiter // nil when disabled

	// mu guards perClient and perClientLimit; the limiters themselves are
	// safe for concurrent use.
	mu             sync.Mutex
	perClient      *lru.Cache[string, *rate.Limiter] // nil when disabled
	perClientLimit RateLimit
}

func newBuckets(l Limits) (*buckets, error) {
	b := &buckets{}
	if l.LoginRate.Enabled() {
		b.global = rate.NewLimiter(rate.Limit(l.LoginRate.Rate), l.LoginRate.Burst)
	}
	if l.LoginPerClient.Enabled() {
		c, err := lru.New[string, *rate.Limiter](l.MaxClients)
		if err != nil {
			return nil, err
		}
		b.perClient = c
		b.perClientLimit = l.LoginPerClient
	}
	return b, nil
}

// reconfigure applies new rates while keeping the global bucket's tokens.
// Per-client buckets start afresh: their old state was earned under other
// rules and keeping it would need a walk over every client.
func (b *buckets) reconfigure(now time.Time, l Limits) (*buckets, error) {
	nb := &buckets{}
	switch {
	case !l.LoginRate.Enabled():
	case b.global != nil:
		b.global.SetLimitAt(now, rate.Limit(l.LoginRate.Rate))
		b.global.SetBurstAt(now, l.LoginRate.Burst)
		nb.global = b.global
	default:
		nb.global = rate.NewLimiter(rate.Limit(l.LoginRate.Rate), l.LoginRate.Burst)
	}
	b.mu.Lock()
	same := b.perClient != nil && b.perClientLimit == l.LoginPerClient && b.perClient.Len() <= l.MaxClients
	if same {
		b.perClient.Resize(l.MaxClients)
		nb.perClient, nb.perClientLimit = b.perClient, b.perClientLimit
	}
	b.mu.Unlock()
	if !same && l.LoginPerClient.Enabled() {
		c, err := lru.New[string, *rate.Limiter](l.MaxClients)
		if err != nil {
			return nil, err
		}
		nb.perClient, nb.perClientLimit = c, l.LoginPerClient
	}
	return nb, nil
}

// take takes a token from each enabled bucket. When one has no token now
// it gives back what it took and returns the wait until a token is due. On
// success it returns what was taken, so a request shed later can give its
// tokens back with refund.
func (b *buckets) take(now time.Time, client string) (tokens, time.Duration) {
	var t tokens
	if b.global != nil {
		if d := takeOne(b.global, now); d > 0 {
			return tokens{}, d
		}
		t.global = b.global
	}
	if b.perClient != nil {
		b.mu.Lock()
		lim, ok := b.perClient.Get(client)
		if !ok {
			lim = rate.NewLimiter(rate.Limit(b.perClientLimit.Rate), b.perClientLimit.Burst)
			b.perClient.Add(client, lim)
		}
		b.mu.Unlock()
		if d := takeOne(lim, now); d > 0 {
			t.refund(now)
			return tokens{}, d
		}
		t.client = lim
	}
	return t, 0
}

// takeOne takes a token if one is there now, and otherwise returns how long
// until one will be (at least a second: Retry-After counts whole seconds).
func takeOne(lim *rate.Limiter, now time.Time) time.Duration {
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); !r.OK() || d > 0 {
		r.CancelAt(now)
		return max(d, time.Second)
	}
	return 0
}

// tokens are the buckets one admitted login took a token from.
type tokens struct {
	global, client *rate.Limiter
}

// none reports whether no token was taken.
func (t tokens) none() bool { return t.global == nil && t.client == nil }

// refund gives the tokens back, for a request that was then shed: a login
// refused for want of a slot should not also cost its client a token.
//
// Reservation.CancelAt cannot do this for a request that waited in a queue:
// it restores nothing once the reservation's time has passed, and passing
// it the earlier time would rewind the bucket's clock and mint tokens for
// the wait twice. Taking -1 tokens at now adds one token, which the bucket
// caps at its burst the next time it is read. For the same reason now must
// be a fresh reading, not one taken before other logins used the bucket.
func (t tokens) refund(now time.Time) {
	if t.global != nil {
		t.global.AllowN(now, -1)
	}
	if t.client != nil {
		t.client.AllowN(now, -1)
	}
}
