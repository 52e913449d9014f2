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

// take reserves a token from each enabled bucket. When one has no token now
// it gives back what it took and returns the wait until a token is due. On
// success it returns the reservations so a request shed later can give its
// tokens back with refund.
func (b *buckets) take(now time.Time, client string) (tokens, time.Duration) {
	var t tokens
	if b.global != nil {
		r := b.global.ReserveN(now, 1)
		if d := r.DelayFrom(now); !r.OK() || d > 0 {
			r.CancelAt(now)
			return tokens{}, max(d, time.Second)
		}
		t.global = r
	}
	if b.perClient != nil {
		b.mu.Lock()
		lim, ok := b.perClient.Get(client)
		if !ok {
			lim = rate.NewLimiter(rate.Limit(b.perClientLimit.Rate), b.perClientLimit.Burst)
			b.perClient.Add(client, lim)
		}
		b.mu.Unlock()
		r := lim.ReserveN(now, 1)
		if d := r.DelayFrom(now); !r.OK() || d > 0 {
			r.CancelAt(now)
			t.refund(now)
			return tokens{}, max(d, time.Second)
		}
		t.client = r
	}
	return t, 0
}

// tokens are the reservations one admitted login holds.
type tokens struct {
	global, client *rate.Reservation
}

// refund gives the tokens back, for a request that was then shed: a login
// refused for want of a slot should not also cost its client a token.
func (t tokens) refund(now time.Time) {
	if t.global != nil {
		t.global.CancelAt(now)
	}
	if t.client != nil {
		t.client.CancelAt(now)
	}
}
