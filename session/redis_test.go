package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lanegate/lanegate/session/redistest"
)

// startRedis starts a private redis-server for t (skipping t when none is
// installed, unless CI requires it).
func startRedis(t testing.TB) *redistest.Server {
	t.Helper()
	return redistest.Start(t)
}

// newTestRedis opens a Redis store closed when t ends.
func newTestRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	return newTestRedisDial(t, opts, nil)
}

func newTestRedisDial(t testing.TB, opts RedisOptions, dial dialFunc) *Redis {
	t.Helper()
	r, err := newRedis(opts, dial)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// newAdmin is a plain client of srv for the test's own inspection, with
// go-redis's defaults, closed when t ends.
func newAdmin(t testing.TB, srv *redistest.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// allKeys lists every key of the admin's database.
func allKeys(t testing.TB, admin *redis.Client) []string {
	t.Helper()
	var keys []string
	iter := admin.Scan(context.Background(), 0, "*", 1000).Iterator()
	for iter.Next(context.Background()) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN: %v", err)
	}
	return keys
}

// shortenTTLs makes d pass for every key under prefix: Redis's clock
// cannot be faked, so each key's remaining TTL is cut by d, and a key with
// no more than d left is deleted, as expiry would.
func shortenTTLs(t testing.TB, admin *redis.Client, prefix string, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	iter := admin.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		left, err := admin.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatalf("PTTL %s: %v", key, err)
		}
		switch {
		case left < 0: // -1: no expiry (never written by the store); -2: gone
		case left <= d:
			err = admin.Del(ctx, key).Err()
		default:
			err = admin.PExpire(ctx, key, left-d).Err()
		}
		if err != nil {
			t.Fatalf("shorten TTL of %s: %v", key, err)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN: %v", err)
	}
}

func TestParseRedisURL(t *testing.T) {
	type want struct {
		kind     string // single, cluster or failover
		addrs    []string
		db       int
		user     string
		pass     string
		tls      bool
		master   string
		sentPass string
	}
	good := []struct {
		url  string
		want want
	}{
		{"redis://localhost:6379/0", want{kind: "single", addrs: []string{"localhost:6379"}}},
		{"redis://h", want{kind: "single", addrs: []string{"h:6379"}}},
		{"REDIS://h:1/2", want{kind: "single", addrs: []string{"h:1"}, db: 2}},
		{"redis://u:p%40ss@h:6380/3", want{kind: "single", addrs: []string{"h:6380"}, db: 3, user: "u", pass: "p@ss"}},
		{"redis://:secret@h/", want{kind: "single", addrs: []string{"h:6379"}, pass: "secret"}},
		{"redis://h?db=5", want{kind: "single", addrs: []string{"h:6379"}, db: 5}},
		{"redis://[::1]:7000/1", want{kind: "single", addrs: []string{"[::1]:7000"}, db: 1}},
		{"rediss://h:6380/1", want{kind: "single", addrs: []string{"h:6380"}, db: 1, tls: true}},
		{"unix:///run/redis.sock?db=4", want{kind: "single", addrs: []string{"/run/redis.sock"}, db: 4}},
		{"redis+cluster://u:p@h1:7000?addr=h2:7001&addr=h3:7002", want{kind: "cluster", addrs: []string{"h1:7000", "h2:7001", "h3:7002"}, user: "u", pass: "p"}},
		{"redis+cluster://h1:7000/0", want{kind: "cluster", addrs: []string{"h1:7000"}}},
		{"rediss+cluster://h1:7000", want{kind: "cluster", addrs: []string{"h1:7000"}, tls: true}},
		{"redis+sentinel://:secret@s1:26379,s2:26380/mymaster/2", want{kind: "failover", addrs: []string{"s1:26379", "s2:26380"}, master: "mymaster", db: 2, pass: "secret"}},
		{"redis+sentinel://s1/my%20master?addr=s2:1234&sentinel_password=sp", want{kind: "failover", addrs: []string{"s1:26379", "s2:1234"}, master: "my master", sentPass: "sp"}},
		{"redis+sentinel://[::1]:26379,[::2]/m/", want{kind: "failover", addrs: []string{"[::1]:26379", "[::2]:26379"}, master: "m"}},
		{"rediss+sentinel://u:p@s1:26379/m", want{kind: "failover", addrs: []string{"s1:26379"}, master: "m", user: "u", pass: "p", tls: true}},
	}
	for _, tc := range good {
		t.Run(tc.url, func(t *testing.T) {
			target, err := parseRedisURL(tc.url)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			var got want
			switch {
			case target.single != nil:
				o := target.single
				got = want{kind: "single", addrs: []string{o.Addr}, db: o.DB, user: o.Username, pass: o.Password, tls: o.TLSConfig != nil}
			case target.cluster != nil:
				o := target.cluster
				got = want{kind: "cluster", addrs: o.Addrs, user: o.Username, pass: o.Password, tls: o.TLSConfig != nil}
			case target.failover != nil:
				o := target.failover
				got = want{kind: "failover", addrs: o.SentinelAddrs, db: o.DB, user: o.Username, pass: o.Password, tls: o.TLSConfig != nil, master: o.MasterName, sentPass: o.SentinelPassword}
			}
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}

	bad := []struct{ url, want string }{
		{"", "empty"},
		{"localhost:6379", "no scheme"},
		{"http://h:6379", `unknown scheme "http"`},
		{"redis+ring://h", `unknown scheme "redis+ring"`},
		{"redis://", "missing host"},
		{"redis:///0", "missing host"},
		{"redis://:pw@:6379/0", "missing host"},
		{"redis://h:6379/x", `bad database "x"`},
		{"redis://h:6379/-1", `bad database "-1"`},
		{"redis://h:6379/0/1", `bad database "0/1"`},
		{"redis://h/0?db=x", `bad database "x"`},
		{"redis://u:hunter2@h:port/0", "invalid port"},
		{"redis://h/0?read_timeout=5s", `unsupported query parameter "read_timeout"`},
		{"redis://h/0?pool_size=1000", `unsupported query parameter "pool_size"`},
		{"unix://", "empty unix socket path"},
		{"redis+cluster:///", "missing host"},
		{"redis+cluster://h:7000/3", `database "3": a cluster has only database 0`},
		{"redis+cluster://h:7000?addr=nohostport", "unable to parse addr param"},
		{"redis+cluster://h:7000?db=1", `unsupported query parameter "db"`},
		{"redis+sentinel://s1:26379", "missing master name"},
		{"redis+sentinel://s1:26379/", "missing master name"},
		{"redis+sentinel:///m", "missing sentinel host"},
		{"redis+sentinel://s1,,s2/m", "empty sentinel address"},
		{"redis+sentinel://s1/m/x", `bad database "x"`},
		{"redis+sentinel://s1:99999/m", `sentinel address "s1:99999": bad port`},
		{"redis+sentinel://:26379/m", `sentinel address ":26379": missing host`},
		{"redis+sentinel://s1/m?pool_size=3", `unsupported query parameter "pool_size"`},
	}
	for _, tc := range bad {
		t.Run("bad/"+tc.url, func(t *testing.T) {
			_, err := NewRedis(RedisOptions{URL: tc.url})
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want one containing %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "session: redis URL: ") {
				t.Errorf("error %q does not say it is about the Redis URL", err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q quotes the password", err)
			}
		})
	}
}

func TestNewRedisRefusesBadOptions(t *testing.T) {
	for _, opts := range []RedisOptions{
		{URL: "redis://h", Timeout: -time.Second},
		{URL: "redis://h", PoolSize: -1},
	} {
		if r, err := NewRedis(opts); err == nil {
			_ = r.Close()
			t.Errorf("NewRedis(%+v): no error", opts)
		}
	}
}

// TestNewRedisDoesNoIO opens stores on addresses where nothing listens:
// lanegate must start while Redis is down, and find out on use.
func TestNewRedisDoesNoIO(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // nothing listens there now
	for _, url := range []string{
		"redis://" + addr + "/0",
		"redis+cluster://" + addr,
		"redis+sentinel://" + addr + "/mymaster",
	} {
		r, err := NewRedis(RedisOptions{URL: url})
		if err != nil {
			t.Fatalf("NewRedis(%s): %v", url, err)
		}
		if err := r.Ping(context.Background()); err == nil {
			t.Errorf("Ping(%s) with nothing listening: no error", url)
		}
		if err := r.Close(); err != nil {
			t.Errorf("Close(%s): %v", url, err)
		}
	}
}

// TestRedisOptionsApplied checks the limits that keep a slow Redis from
// slowing lanegate: every step bounded, no retries, a capped pool.
func TestRedisOptionsApplied(t *testing.T) {
	for _, tc := range []struct {
		opts     RedisOptions
		timeout  time.Duration
		poolSize int
	}{
		{RedisOptions{URL: "redis://h/0"}, DefaultRedisTimeout, 0},
		{RedisOptions{URL: "redis://h/0", Timeout: 250 * time.Millisecond, PoolSize: 7}, 250 * time.Millisecond, 7},
	} {
		r, err := NewRedis(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		o := r.client.(*redis.Client).Options()
		if o.DialTimeout != tc.timeout || o.ReadTimeout != tc.timeout || o.WriteTimeout != tc.timeout || o.PoolTimeout != tc.timeout {
			t.Errorf("%+v: timeouts dial %s read %s write %s pool %s, want %s",
				tc.opts, o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout, tc.timeout)
		}
		if o.MaxRetries != 0 { // set to -1, which go-redis turns into 0: no retries
			t.Errorf("%+v: MaxRetries %d, want 0 (none)", tc.opts, o.MaxRetries)
		}
		if tc.poolSize != 0 && o.PoolSize != tc.poolSize {
			t.Errorf("%+v: PoolSize %d, want %d", tc.opts, o.PoolSize, tc.poolSize)
		}
		if o.MaxActiveConns != o.PoolSize {
			t.Errorf("%+v: MaxActiveConns %d, want PoolSize %d (a bounded pool)", tc.opts, o.MaxActiveConns, o.PoolSize)
		}
		if r.prefix != DefaultRedisKeyPrefix {
			t.Errorf("prefix %q, want %q", r.prefix, DefaultRedisKeyPrefix)
		}
		_ = r.Close()
	}
}

// TestRedisKeysHoldNoSessionKey checks what an attacker reading Redis sees:
// one key, the prefix and an HMAC, and nothing of the session key nor of
// the session hash Django and lanegate exchange.
func TestRedisKeysHoldNoSessionKey(t *testing.T) {
	srv := startRedis(t)
	admin := newAdmin(t, srv)
	kr, err := ParseKeyring("kid1:" + strings.Repeat("s", MinSecretLen))
	if err != nil {
		t.Fatal(err)
	}
	km := NewKeyMaker(kr)
	const sessionKey = "z9secretsessionkeyfromthecookie1"
	sid := SessionHash(sessionKey)
	k := km.Key(sid)

	for _, prefix := range []string{"", "app7:sess:"} {
		r := newTestRedis(t, RedisOptions{URL: srv.URL(), KeyPrefix: prefix})
		if !mustPut(t, r, k, testEntry("42"), time.Hour) {
			t.Fatal("Put: not stored")
		}
		want := prefix
		if want == "" {
			want = DefaultRedisKeyPrefix
		}
		want += k.String()
		keys := allKeys(t, admin)
		if len(keys) != 1 || keys[0] != want {
			t.Fatalf("keys in Redis: %q, want only %q", keys, want)
		}
		val, err := admin.Get(context.Background(), want).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{sessionKey, sid} {
			if strings.Contains(keys[0], secret) || strings.Contains(val, secret) {
				t.Fatalf("Redis holds %q", secret)
			}
		}
		if err := admin.FlushDB(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRedisCorruptValue(t *testing.T) {
	srv := startRedis(t)
	admin := newAdmin(t, srv)
	r := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: 5 * time.Second})
	k := testKey("corrupt")
	good := string(appendEntry(nil, &Entry{UserID: "42", AuthHash: "h", Expires: farFuture}))
	for _, v := range []string{
		"",
		"garbage",
		"\x02" + good[1:],      // unknown format
		good[:len(good)-1],     // truncated
		good + "x",             // trailing bytes
		"\x01\xff\xff\xff\xff", // length past the end
		`{"uid":"42"}`,
	} {
		if err := admin.Set(context.Background(), DefaultRedisKeyPrefix+k.String(), v, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		e, ok, err := r.Get(context.Background(), k)
		if ok || !errors.Is(err, ErrCorrupt) {
			t.Errorf("Get of %q: %+v %v %v, want a miss and ErrCorrupt", v, e, ok, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "session: redis get: ") {
			t.Errorf("error %q lacks context", err)
		}
	}
}

// TestRedisExpiresInPast checks that the Redis store, unlike the memory
// store, never returns an entry past its own Expires, whatever its TTL.
func TestRedisExpiresInPast(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: 5 * time.Second})
	now := time.Unix(1767225600, 0)
	r.now = func() time.Time { return now }
	k := testKey("expires")
	for _, tc := range []struct {
		expires time.Time
		ok      bool
	}{
		{now.Add(-time.Hour), false},
		{now, false},
		{now.Add(time.Nanosecond), true},
		{time.Time{}, true}, // no expiry of its own: the TTL alone decides
	} {
		e := Entry{UserID: "42", Expires: tc.expires}
		if !mustPut(t, r, k, e, time.Hour) {
			t.Fatal("Put: not stored")
		}
		if _, ok := mustGet(t, r, k); ok != tc.ok {
			t.Errorf("Expires %s at %s: ok %v, want %v", tc.expires, now, ok, tc.ok)
		}
	}
}

// TestRedisTTLRoundsUp checks that sub-millisecond TTLs and tombstones
// still store (Redis counts in milliseconds, and PX 0 is an error).
func TestRedisTTLRoundsUp(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: 5 * time.Second})
	k := testKey("sub-ms")
	if stored, err := r.Put(context.Background(), k, testEntry("1"), time.Microsecond); err != nil || !stored {
		t.Fatalf("Put with 1µs TTL: stored %v, err %v", stored, err)
	}
	if err := r.Revoke(context.Background(), k, time.Microsecond); err != nil {
		t.Fatalf("Revoke with 1µs tombstone: %v", err)
	}
	for d, want := range map[time.Duration]int64{
		time.Nanosecond:             1,
		time.Millisecond:            1,
		1500 * time.Microsecond:     2,
		time.Second:                 1000,
		time.Hour + time.Nanosecond: 3_600_001,
	} {
		if got := millis(d); got != want {
			t.Errorf("millis(%s) = %d, want %d", d, got, want)
		}
	}
}

// timed runs f and fails t when it takes longer than bound by the real
// clock: a generous upper bound, not a latency measurement.
func timed(t *testing.T, what string, bound time.Duration, f func() error) error {
	t.Helper()
	start := time.Now()
	err := f()
	if took := time.Since(start); took > bound {
		t.Errorf("%s took %s, want under %s", what, took, bound)
	}
	return err
}

// TestRedisStopAndRestart checks that a Redis going away makes every call
// fail promptly, and that the same store works again once Redis is back.
func TestRedisStopAndRestart(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: 100 * time.Millisecond})
	ctx := context.Background()
	k := testKey("restart")
	if !mustPut(t, r, k, testEntry("1"), time.Hour) {
		t.Fatal("Put: not stored")
	}

	srv.Stop()
	const bound = 2 * time.Second
	for range 3 { // the pooled connection first, then fresh dials
		if err := timed(t, "Get", bound, func() error { _, _, err := r.Get(ctx, k); return err }); err == nil {
			t.Error("Get with Redis stopped: no error")
		}
		if err := timed(t, "Put", bound, func() error { _, err := r.Put(ctx, k, testEntry("1"), time.Hour); return err }); err == nil {
			t.Error("Put with Redis stopped: no error")
		}
		if err := timed(t, "Revoke", bound, func() error { return r.Revoke(ctx, k, time.Hour) }); err == nil {
			t.Error("Revoke with Redis stopped: no error")
		}
		if err := timed(t, "Len", bound, func() error { _, err := r.Len(ctx); return err }); err == nil {
			t.Error("Len with Redis stopped: no error")
		}
		if err := timed(t, "Ping", bound, func() error { return r.Ping(ctx) }); err == nil {
			t.Error("Ping with Redis stopped: no error")
		} else if errors.Is(err, ErrClosed) {
			t.Errorf("Ping with Redis stopped: %v; ErrClosed is for a closed store", err)
		}
	}

	srv.Restart()
	// go-redis stops dialing after a run of failures and probes once a
	// second until a dial succeeds, so recovery takes up to about a second.
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := r.Ping(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover after Redis restarted: %v", err)
		}
		<-tick.C
	}
	wantMiss(t, r, k) // the restarted Redis is empty
	e := testEntry("2")
	if !mustPut(t, r, k, e, time.Hour) {
		t.Fatal("Put after restart: not stored")
	}
	wantEntry(t, r, k, e)
}

// pauseRedis makes srv take no command from any client for long (the test
// stops the server before then): Redis as seen by lanegate when it stalls.
func pauseRedis(t *testing.T, admin *redis.Client) {
	t.Helper()
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", 60_000, "ALL").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
}

// TestRedisSlowServerTimesOut checks that a stalled Redis costs a Get its
// timeout, not a hang.
func TestRedisSlowServerTimesOut(t *testing.T) {
	t.Parallel()
	srv := startRedis(t)
	admin := newAdmin(t, srv)
	r := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: 100 * time.Millisecond})
	ctx := context.Background()
	if err := r.Ping(ctx); err != nil { // a pooled connection, as in steady state
		t.Fatal(err)
	}
	pauseRedis(t, admin)
	for _, what := range []string{"pooled", "fresh"} {
		err := timed(t, "Get from a stalled Redis ("+what+" connection)", 2*time.Second, func() error {
			_, _, err := r.Get(ctx, testKey("slow"))
			return err
		})
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("Get from a stalled Redis (%s connection): %v, want a timeout", what, err)
		}
	}
	// A caller's shorter deadline wins over the store's timeout.
	r2 := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: time.Minute})
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := timed(t, "Get with a 100ms context", 2*time.Second, func() error {
		_, _, err := r2.Get(cctx, testKey("slow"))
		return err
	}); err == nil {
		t.Error("Get from a stalled Redis with a context deadline: no error")
	}
}

// connCounter dials TCP and counts the connections open at once, from
// dial until go-redis closes them: the client's own view, exact.
type connCounter struct {
	open, max atomic.Int64
	dials     atomic.Int64
}

func (c *connCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.dials.Add(1)
	n := c.open.Add(1)
	for {
		m := c.max.Load()
		if n <= m || c.max.CompareAndSwap(m, n) {
			break
		}
	}
	return &countedConn{Conn: conn, c: c}, nil
}

type countedConn struct {
	net.Conn
	c    *connCounter
	once sync.Once
}

func (cc *countedConn) Close() error {
	cc.once.Do(func() { cc.c.open.Add(-1) })
	return cc.Conn.Close()
}

// lanegateClients counts lanegate's connections in CLIENT LIST.
func lanegateClients(t *testing.T, admin *redis.Client) int {
	t.Helper()
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Errorf("CLIENT LIST: %v", err)
		return 0
	}
	return strings.Count(list, " name="+redisClientName+" ")
}

// TestRedisPoolSizeBoundsConnections checks that 200 concurrent requests
// hold no more than PoolSize connections, against a healthy Redis and a
// stalled one, and that against the stalled one they all return within
// about the timeout instead of queueing behind each other.
func TestRedisPoolSizeBoundsConnections(t *testing.T) {
	t.Parallel()
	const (
		poolSize = 4
		callers  = 200
	)
	srv := startRedis(t)
	admin := newAdmin(t, srv)
	ctx := context.Background()
	k := testKey("pool")

	t.Run("Healthy", func(t *testing.T) {
		var cc connCounter
		r := newTestRedisDial(t, RedisOptions{URL: srv.URL(), Timeout: 5 * time.Second, PoolSize: poolSize}, cc.dial)
		mustPut(t, r, k, testEntry("1"), time.Hour)

		// CLIENT LIST sampled while the callers run: no connection is
		// ever closed against a healthy Redis, so the count is exact.
		done := make(chan struct{})
		var sampled sync.WaitGroup
		maxListed := 0
		sampled.Go(func() {
			for {
				maxListed = max(maxListed, lanegateClients(t, admin))
				select {
				case <-done:
					return
				default:
				}
			}
		})
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for range 10 {
					if _, ok, err := r.Get(ctx, k); err != nil || !ok {
						t.Errorf("Get: %v %v", ok, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(done)
		sampled.Wait()
		maxListed = max(maxListed, lanegateClients(t, admin))
		if maxListed > poolSize || cc.max.Load() > poolSize {
			t.Errorf("connections: %d in CLIENT LIST, %d open at once; want at most %d", maxListed, cc.max.Load(), poolSize)
		}
		if maxListed == 0 {
			t.Error("CLIENT LIST showed no lanegate connection")
		}
	})

	t.Run("Stalled", func(t *testing.T) {
		var cc connCounter
		const timeout = 200 * time.Millisecond
		r := newTestRedisDial(t, RedisOptions{URL: srv.URL(), Timeout: timeout, PoolSize: poolSize}, cc.dial)
		pauseRedis(t, admin)
		start := time.Now()
		var wg sync.WaitGroup
		var failed atomic.Int64
		for range callers {
			wg.Go(func() {
				if _, _, err := r.Get(ctx, k); err != nil {
					failed.Add(1)
				}
			})
		}
		// go-redis's own count of the connections in its pool, sampled
		// while the callers run.
		done := make(chan struct{})
		var sampled sync.WaitGroup
		var maxPooled uint32
		sampled.Go(func() {
			for {
				maxPooled = max(maxPooled, r.client.PoolStats().TotalConns)
				select {
				case <-done:
					return
				default:
					runtime.Gosched()
				}
			}
		})
		wg.Wait()
		close(done)
		sampled.Wait()
		if maxPooled > poolSize {
			t.Errorf("%d connections in the pool at once, want at most %d", maxPooled, poolSize)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%d Gets from a stalled Redis took %s, want under 2s (timeout %s)", callers, took, timeout)
		}
		if n := failed.Load(); n != callers {
			t.Errorf("%d of %d Gets from a stalled Redis failed, want all", n, callers)
		}
		// A connection that timed out gives its pool slot back just before
		// go-redis closes its socket, so a replacement can be dialed while
		// it closes: at most one closing socket per slot.
		if n := cc.max.Load(); n > 2*poolSize {
			t.Errorf("%d connections open at once, want at most %d (%d pooled, %d closing)", n, 2*poolSize, poolSize, poolSize)
		}
		// Each dialed connection holds its slot for a whole timeout, so
		// the dials are bounded by slots and time, not by callers.
		if n := cc.dials.Load(); n > callers/4 {
			t.Errorf("%d dials for %d stalled Gets: a stampede", n, callers)
		}
		t.Logf("%d dials for %d stalled Gets, at most %d sockets open at once", cc.dials.Load(), callers, cc.max.Load())
	})
}

func TestRedisCloseDuringUse(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: 5 * time.Second})
	ctx := context.Background()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range 8 {
		wg.Go(func() {
			<-start
			for i := 0; ; i++ {
				_, _, err := r.Get(ctx, testKey(fmt.Sprint(w, i)))
				if err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("Get racing Close: %v, want ErrClosed", err)
					}
					return
				}
			}
		})
	}
	close(start)
	if err := r.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	if err := r.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping after Close: %v, want ErrClosed", err)
	}
	if _, err := r.Len(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Len after Close: %v, want ErrClosed", err)
	}
}

func TestEntryEncoding(t *testing.T) {
	for _, uid := range oddUserIDs {
		e := Entry{UserID: uid, AuthHash: uid + "#", Expires: time.Unix(-1, 999_999_999), Granted: time.Unix(1<<40, 1)}
		b := appendEntry(nil, &e)
		if string(b) == redisTombstone {
			t.Fatalf("entry %q encodes as the tombstone", uid)
		}
		got, err := decodeEntry(string(b))
		if err != nil || !sameEntry(got, e) {
			t.Fatalf("round trip of %+v: %+v, %v", e, got, err)
		}
	}
}

// FuzzDecodeEntry checks that no stored value makes Get panic, and that
// whatever decodes re-encodes to the same bytes.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(string(appendEntry(nil, &Entry{UserID: "42", AuthHash: "h", Expires: farFuture, Granted: time.Unix(1, 2)})))
	f.Add("")
	f.Add(redisTombstone)
	f.Add("\x01\x80")
	f.Fuzz(func(t *testing.T, v string) {
		e, err := decodeEntry(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if again := string(appendEntry(nil, &e)); again != v {
			// Varints have one canonical form only when minimal; accept
			// non-minimal input as long as it decodes to the same entry.
			e2, err := decodeEntry(again)
			if err != nil || !sameEntry(e, e2) {
				t.Fatalf("%q decodes to %+v, which re-encodes to %q", v, e, again)
			}
		}
	})
}

func BenchmarkRedisGet(b *testing.B) {
	srv := startRedis(b)
	r := newTestRedis(b, RedisOptions{URL: srv.URL(), Timeout: time.Second})
	k := testKey("bench")
	if _, err := r.Put(context.Background(), k, testEntry("42"), time.Hour); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := r.Get(ctx, k); err != nil || !ok {
			b.Fatalf("Get: %v %v", ok, err)
		}
	}
}

func BenchmarkRedisGetParallel(b *testing.B) {
	srv := startRedis(b)
	r := newTestRedis(b, RedisOptions{URL: srv.URL(), Timeout: time.Second})
	k := testKey("bench")
	if _, err := r.Put(context.Background(), k, testEntry("42"), time.Hour); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok, err := r.Get(ctx, k); err != nil || !ok {
				b.Errorf("Get: %v %v", ok, err)
				return
			}
		}
	})
}

// BenchmarkBeginHitRedis is the whole per-request cost of a cache hit with
// the Redis store: cookie hash, key HMAC, one GET round trip on loopback,
// and signing the identity. Compare with BenchmarkBeginHitMemory.
func BenchmarkBeginHitRedis(b *testing.B) {
	srv := redistest.Start(b)
	store, err := NewRedis(RedisOptions{URL: srv.URL(), Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	benchBeginHit(b, store)
}
