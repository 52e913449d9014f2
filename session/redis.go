package session

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults of RedisOptions.
const (
	// DefaultRedisTimeout bounds every Redis step (dial, read, write, wait
	// for a pooled connection). lanegate fails open, so a slow Redis must
	// cost a request little more than this before it takes Django's path.
	DefaultRedisTimeout = 100 * time.Millisecond
	// DefaultRedisKeyPrefix starts every key lanegate writes, so that its
	// keys are recognisable (and SCAN-able) in a shared database.
	DefaultRedisKeyPrefix = "lanegate:s:"
)

// ErrCorrupt is returned, wrapped, by Get when a stored value cannot be
// decoded. The read counts as a miss; the error lets the caller count it.
var ErrCorrupt = errors.New("session: corrupt store value")

// redisTombstone is the value of a revoked key. Entries are never one byte
// long (see appendEntry), so no entry can be mistaken for it.
const redisTombstone = "-"

// entryFormat starts every encoded entry; a future encoding changes it, and
// a reader that meets a format it does not know treats the value as corrupt.
const entryFormat = 1

// redisPutScript stores ARGV[1] under KEYS[1] for ARGV[2] milliseconds
// unless the key holds a tombstone: in one script, so that a Revoke cannot
// land between the check and the write (a grant computed before a logout
// must not undo it).
const redisPutScript = `
if redis.call('GET', KEYS[1]) == '` + redisTombstone + `' then
	return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`

// redisClientName names lanegate's connections in CLIENT LIST, so an
// operator can tell them apart from other clients of the same Redis.
const redisClientName = "lanegate"

// RedisOptions configure a Redis store.
type RedisOptions struct {
	// URL names the Redis deployment; see NewRedis for the forms.
	URL string
	// Timeout bounds dialing, each read and write, and the wait for a free
	// pooled connection. Zero means DefaultRedisTimeout.
	Timeout time.Duration
	// PoolSize caps the connections to each Redis node. Zero means
	// go-redis's default, 10 per GOMAXPROCS.
	PoolSize int
	// KeyPrefix starts every key. Empty means DefaultRedisKeyPrefix.
	KeyPrefix string
}

// Redis is a Store in Redis, shared by every lanegate that uses the same
// Redis and signing secret. Keys are KeyPrefix + Key.String(): an HMAC of
// the session hash, never a session key. Values are a compact binary
// encoding of Entry, or a tombstone ("-") for a revoked session.
//
// Every call is bounded by the configured timeout and is never retried:
// lanegate fails open, and a retry would only add latency to a request
// that can take Django's normal path instead.
type Redis struct {
	client redis.UniversalClient
	prefix string
	put    *redis.Script
	now    func() time.Time
	closed atomic.Bool
}

var _ Store = (*Redis)(nil)

// dialFunc dials a Redis node; tests pass one to count connections.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// NewRedis returns a Redis store for opts.URL. It does no network I/O, so
// a Redis that is down when lanegate starts does not stop it from starting
// (every call then fails, and lanegate fails open until Redis is back);
// use Ping to check the connection.
//
// URL forms:
//
//	redis://[user:pass@]host[:port][/db]       one server (port 6379, db 0 by default)
//	rediss://[user:pass@]host[:port][/db]      the same over TLS
//	unix://[user:pass@]/path/to/redis.sock[?db=N]
//	redis+cluster://[user:pass@]host:port[?addr=host2:port&addr=...]
//	rediss+cluster://...                       Redis Cluster (over TLS)
//	redis+sentinel://[user:pass@]s1:port[,s2:port...]/master-name[/db][?addr=s3:port]
//	rediss+sentinel://...                      Sentinel-managed master (over TLS)
//
// The db may also be given as ?db=N for the single-server forms. A cluster
// has only database 0. For Sentinel, user:pass authenticates to the master
// (and its replicas); sentinels that require a password of their own get
// it from ?sentinel_username=...&sentinel_password=.... Sentinels listen on
// 26379 unless a port is given. Other query parameters are refused:
// timeouts and the pool come from RedisOptions, not the URL.
func NewRedis(opts RedisOptions) (*Redis, error) {
	return newRedis(opts, nil)
}

// NewRedisClient returns a client for the deployment opts.URL names, with
// the limits NewRedis gives its own (every step bounded by opts.Timeout,
// no retries, a hard cap on connections), for the other parts of lanegate
// that share Redis: the fleet's leases. KeyPrefix is not used.
func NewRedisClient(opts RedisOptions) (redis.UniversalClient, error) {
	return newRedisClient(opts, nil)
}

// newRedis is NewRedis with a custom dialer for single-server and cluster
// URLs; dial nil means go-redis's own.
func newRedis(opts RedisOptions, dial dialFunc) (*Redis, error) {
	client, err := newRedisClient(opts, dial)
	if err != nil {
		return nil, err
	}
	prefix := opts.KeyPrefix
	if prefix == "" {
		prefix = DefaultRedisKeyPrefix
	}
	return &Redis{
		client: client,
		prefix: prefix,
		put:    redis.NewScript(redisPutScript),
		now:    time.Now,
	}, nil
}

func newRedisClient(opts RedisOptions, dial dialFunc) (redis.UniversalClient, error) {
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("session: redis: negative timeout %s", opts.Timeout)
	}
	if opts.PoolSize < 0 {
		return nil, fmt.Errorf("session: redis: negative pool size %d", opts.PoolSize)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultRedisTimeout
	}
	poolSize := opts.PoolSize
	if poolSize == 0 {
		poolSize = 10 * runtime.GOMAXPROCS(0) // go-redis's default, made explicit to cap it
	}

	t, err := parseRedisURL(opts.URL)
	if err != nil {
		return nil, err
	}
	// The same limits for every kind of deployment: each step bounded by
	// timeout, no retries, and a pool that never grows past poolSize
	// (go-redis documents PoolSize as a base it may exceed under load;
	// MaxActiveConns is the hard cap, so a Redis stall cannot turn into a
	// stampede of dials).
	var client redis.UniversalClient
	switch {
	case t.single != nil:
		o := t.single
		o.ClientName = redisClientName
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.ContextTimeoutEnabled = true // a caller's shorter deadline wins
		o.MaxRetries = -1              // go-redis: -1 disables retries, 0 means 3
		o.DialerRetries = 1            // one dial attempt; go-redis defaults to 5 with backoff
		o.PoolSize, o.MaxActiveConns = poolSize, poolSize
		o.PipelinePoolSize = -1 // no second pool beside the capped one
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		if dial != nil {
			o.Dialer = dial
		}
		client = redis.NewClient(o)
	case t.cluster != nil:
		o := t.cluster
		o.ClientName = redisClientName
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1
		o.DialerRetries = 1
		o.PoolSize, o.MaxActiveConns = poolSize, poolSize // per node
		o.PipelinePoolSize = -1
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		if dial != nil {
			o.Dialer = dial
		}
		client = redis.NewClusterClient(o)
	default:
		o := t.failover
		o.ClientName = redisClientName
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1
		o.DialerRetries = 1
		o.PoolSize, o.MaxActiveConns = poolSize, poolSize
		o.PipelinePoolSize = -1
		client = redis.NewFailoverClient(o)
	}
	return client, nil
}

// redisTarget is what a URL names: exactly one field is set.
type redisTarget struct {
	single   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

// parseRedisURL reads the URL forms NewRedis documents. Its errors never
// quote the URL, which may hold a password.
func parseRedisURL(raw string) (redisTarget, error) {
	if raw == "" {
		return redisTarget{}, errors.New("session: redis URL: empty")
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return redisTarget{}, errors.New("session: redis URL: no scheme: want redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://")
	}
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		return parseSingleURL(raw)
	case "redis+cluster", "rediss+cluster":
		return parseClusterURL(strings.TrimSuffix(strings.ToLower(scheme), "+cluster") + "://" + rest)
	case "redis+sentinel", "rediss+sentinel":
		return parseSentinelURL(strings.TrimSuffix(strings.ToLower(scheme), "+sentinel"), rest)
	default:
		return redisTarget{}, fmt.Errorf("session: redis URL: unknown scheme %q: want redis, rediss, unix, redis+cluster, rediss+cluster, redis+sentinel or rediss+sentinel", scheme)
	}
}

func parseSingleURL(raw string) (redisTarget, error) {
	u, err := parseURL(raw)
	if err != nil {
		return redisTarget{}, err
	}
	if err := allowQuery(u, "db"); err != nil {
		return redisTarget{}, err
	}
	if u.Scheme != "unix" {
		if u.Hostname() == "" {
			return redisTarget{}, errors.New("session: redis URL: missing host: want redis://[user:pass@]host[:port][/db]")
		}
		if _, err := parseDB(strings.Trim(u.Path, "/")); err != nil {
			return redisTarget{}, err
		}
	}
	if q := u.Query(); q.Has("db") {
		if _, err := parseDB(q.Get("db")); err != nil {
			return redisTarget{}, err
		}
	}
	o, err := redis.ParseURL(raw)
	if err != nil {
		return redisTarget{}, fmt.Errorf("session: redis URL: %w", err)
	}
	return redisTarget{single: o}, nil
}

func parseClusterURL(raw string) (redisTarget, error) {
	u, err := parseURL(raw)
	if err != nil {
		return redisTarget{}, err
	}
	if err := allowQuery(u, "addr"); err != nil {
		return redisTarget{}, err
	}
	if u.Hostname() == "" {
		return redisTarget{}, errors.New("session: redis URL: missing host: want redis+cluster://[user:pass@]host:port[?addr=host2:port...]")
	}
	if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
		return redisTarget{}, fmt.Errorf("session: redis URL: database %q: a cluster has only database 0", db)
	}
	u.Path = ""
	o, err := redis.ParseClusterURL(u.String())
	if err != nil {
		return redisTarget{}, fmt.Errorf("session: redis URL: %w", err)
	}
	return redisTarget{cluster: o}, nil
}

// parseSentinelURL reads redis+sentinel URLs by hand: their authority is a
// comma-separated list of sentinels, which net/url does not parse when one
// of them is a bracketed IPv6 address.
func parseSentinelURL(scheme, rest string) (redisTarget, error) {
	const form = "redis+sentinel://[user:pass@]host:port[,host:port...]/master-name[/db]"
	rest, _, _ = strings.Cut(rest, "#")
	rest, query, _ := strings.Cut(rest, "?")
	authority, path, _ := strings.Cut(rest, "/")
	userinfo, hosts := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hosts = authority[:i], authority[i+1:]
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return redisTarget{}, fmt.Errorf("session: redis URL: query: %w", err)
	}
	for name := range q {
		switch name {
		case "addr", "sentinel_username", "sentinel_password":
		default:
			return redisTarget{}, unsupportedQuery(name)
		}
	}

	o := &redis.FailoverOptions{
		SentinelUsername: q.Get("sentinel_username"),
		SentinelPassword: q.Get("sentinel_password"),
	}
	if userinfo != "" {
		// Through net/url, for its percent-decoding of user and password.
		u, err := parseURL("redis://" + userinfo + "@sentinel")
		if err != nil {
			return redisTarget{}, err
		}
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	var addrs []string
	if hosts != "" {
		addrs = strings.Split(hosts, ",")
	}
	addrs = append(addrs, q["addr"]...)
	if len(addrs) == 0 {
		return redisTarget{}, errors.New("session: redis URL: missing sentinel host: want " + form)
	}
	for _, a := range addrs {
		addr, err := sentinelAddr(a)
		if err != nil {
			return redisTarget{}, err
		}
		o.SentinelAddrs = append(o.SentinelAddrs, addr)
	}

	master, db, _ := strings.Cut(path, "/")
	if master == "" {
		return redisTarget{}, errors.New("session: redis URL: missing master name: want " + form)
	}
	if o.MasterName, err = url.PathUnescape(master); err != nil {
		return redisTarget{}, fmt.Errorf("session: redis URL: master name: %w", err)
	}
	if o.DB, err = parseDB(strings.TrimSuffix(db, "/")); err != nil {
		return redisTarget{}, err
	}
	if scheme == "rediss" {
		// No ServerName: one config serves the sentinels, the master and
		// its replicas, and crypto/tls takes each one's from the address
		// it dials.
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return redisTarget{failover: o}, nil
}

// sentinelAddr checks one sentinel address, adding the default port 26379.
func sentinelAddr(a string) (string, error) {
	a = strings.TrimSpace(a)
	if a == "" {
		return "", errors.New("session: redis URL: empty sentinel address")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		// No port: a bare name, IPv4 or bracketed IPv6 address.
		host, port = strings.TrimSuffix(strings.TrimPrefix(a, "["), "]"), "26379"
	}
	if host == "" {
		return "", fmt.Errorf("session: redis URL: sentinel address %q: missing host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("session: redis URL: sentinel address %q: bad port", a)
	}
	return net.JoinHostPort(host, port), nil
}

// parseURL is url.Parse without the URL in its errors: it may hold a
// password, and errors end up in logs.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("session: redis URL: %w", err)
	}
	return u, nil
}

// allowQuery refuses query parameters other than allowed. go-redis would
// accept timeouts and pool sizes there; lanegate sets those itself and
// would silently override them.
func allowQuery(u *url.URL, allowed ...string) error {
	for name := range u.Query() {
		ok := false
		for _, a := range allowed {
			ok = ok || name == a
		}
		if !ok {
			return unsupportedQuery(name)
		}
	}
	return nil
}

func unsupportedQuery(name string) error {
	return fmt.Errorf("session: redis URL: unsupported query parameter %q (timeouts and pool size come from lanegate's Redis settings, not the URL)", name)
}

// parseDB reads a database number; empty means 0.
func parseDB(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("session: redis URL: bad database %q: want a number ≥ 0", s)
	}
	return n, nil
}

// key is the Redis key of k.
func (r *Redis) key(k Key) string {
	b := make([]byte, len(r.prefix)+2*len(k))
	n := copy(b, r.prefix)
	hex.Encode(b[n:], k[:])
	return string(b)
}

// fail wraps err from operation op; any error after Close is ErrClosed,
// which is what go-redis's "client is closed" means to a caller.
func (r *Redis) fail(op string, err error) error {
	if r.closed.Load() || errors.Is(err, redis.ErrClosed) {
		err = ErrClosed
	}
	return fmt.Errorf("session: redis %s: %w", op, err)
}

// Get implements Store. A value that cannot be decoded is a miss and an
// error wrapping ErrCorrupt. An entry past its own Expires is a miss even
// while its key lives.
func (r *Redis) Get(ctx context.Context, k Key) (Entry, bool, error) {
	if r.closed.Load() {
		return Entry{}, false, r.fail("get", ErrClosed)
	}
	v, err := r.client.Get(ctx, r.key(k)).Result()
	if errors.Is(err, redis.Nil) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, r.fail("get", err)
	}
	if v == redisTombstone {
		return Entry{}, false, nil
	}
	e, err := decodeEntry(v)
	if err != nil {
		return Entry{}, false, fmt.Errorf("session: redis get: %w", err)
	}
	if !e.Expires.IsZero() && !r.now().Before(e.Expires) {
		return Entry{}, false, nil
	}
	return e, true, nil
}

// Put implements Store, atomically with respect to Revoke.
func (r *Redis) Put(ctx context.Context, k Key, e Entry, ttl time.Duration) (bool, error) {
	if r.closed.Load() {
		return false, r.fail("put", ErrClosed)
	}
	if ttl <= 0 {
		return false, nil
	}
	stored, err := r.put.Run(ctx, r.client, []string{r.key(k)}, appendEntry(nil, &e), millis(ttl)).Int64()
	if err != nil {
		return false, r.fail("put", err)
	}
	return stored == 1, nil
}

// Revoke implements Store. With tombstone <= 0 it deletes the key, and a
// later Put is not refused.
func (r *Redis) Revoke(ctx context.Context, k Key, tombstone time.Duration) error {
	if r.closed.Load() {
		return r.fail("revoke", ErrClosed)
	}
	var err error
	if tombstone > 0 {
		err = r.client.Set(ctx, r.key(k), redisTombstone, time.Duration(millis(tombstone))*time.Millisecond).Err()
	} else {
		err = r.client.Del(ctx, r.key(k)).Err()
	}
	if err != nil {
		return r.fail("revoke", err)
	}
	return nil
}

// Len implements Store with DBSIZE, which counts every key of the database
// (summed over the masters of a cluster), not only lanegate's: give
// lanegate a database of its own for the count to mean anything.
func (r *Redis) Len(ctx context.Context) (int, error) {
	if r.closed.Load() {
		return 0, r.fail("len", ErrClosed)
	}
	var n int64
	var err error
	if c, ok := r.client.(*redis.ClusterClient); ok {
		var sum atomic.Int64 // ForEachMaster runs fn on the masters concurrently
		err = c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			k, err := m.DBSize(ctx).Result()
			sum.Add(k)
			return err
		})
		n = sum.Load()
	} else {
		n, err = r.client.DBSize(ctx).Result()
	}
	if err != nil {
		return 0, r.fail("len", err)
	}
	return int(n), nil
}

// Ping checks that Redis answers, for health checks.
func (r *Redis) Ping(ctx context.Context) error {
	if r.closed.Load() {
		return r.fail("ping", ErrClosed)
	}
	if err := r.client.Ping(ctx).Err(); err != nil {
		return r.fail("ping", err)
	}
	return nil
}

// Close closes the connections; later calls fail with ErrClosed. Closing
// again does nothing.
func (r *Redis) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("session: redis close: %w", err)
	}
	return nil
}

// millis is d in whole milliseconds, rounded up: Redis expiries are in
// milliseconds, and a positive duration must not become 0 ("no expiry" to
// SET would be an error) nor end earlier than asked.
func millis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// appendEntry appends the encoding of e to b:
//
//	format byte (entryFormat)
//	uvarint len(UserID), UserID
//	uvarint len(AuthHash), AuthHash
//	varint Expires Unix seconds, uvarint its nanoseconds
//	varint Granted Unix seconds, uvarint its nanoseconds
//
// Length-prefixed, so any UserID and AuthHash round-trip, and at least six
// bytes long, so never the tombstone.
func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, entryFormat)
	b = binary.AppendUvarint(b, uint64(len(e.UserID)))
	b = append(b, e.UserID...)
	b = binary.AppendUvarint(b, uint64(len(e.AuthHash)))
	b = append(b, e.AuthHash...)
	b = appendTime(b, e.Expires)
	return appendTime(b, e.Granted)
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// decodeEntry reverses appendEntry. Strings in the result share v's memory.
func decodeEntry(v string) (Entry, error) {
	d := entryDecoder{s: v}
	if v == "" || v[0] != entryFormat {
		return Entry{}, fmt.Errorf("%w: unknown format", ErrCorrupt)
	}
	d.s = v[1:]
	e := Entry{
		UserID:   d.string(),
		AuthHash: d.string(),
		Expires:  d.time(),
		Granted:  d.time(),
	}
	if d.err == nil && d.s != "" {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.s))
	}
	if d.err != nil {
		return Entry{}, d.err
	}
	return e, nil
}

// entryDecoder reads an encoded entry front to back, keeping the first
// error.
type entryDecoder struct {
	s   string
	err error
}

func (d *entryDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = fmt.Errorf("%w: bad varint", ErrCorrupt)
		return 0
	}
	d.s = d.s[n:]
	return x
}

func (d *entryDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if n <= 0 {
		d.err = fmt.Errorf("%w: bad varint", ErrCorrupt)
		return 0
	}
	d.s = d.s[n:]
	return x
}

func (d *entryDecoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.s)) {
		d.err = fmt.Errorf("%w: string of %d bytes in %d", ErrCorrupt, n, len(d.s))
		return ""
	}
	s := d.s[:n]
	d.s = d.s[n:]
	return s
}

func (d *entryDecoder) time() time.Time {
	sec, nsec := d.varint(), d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= uint64(time.Second) {
		d.err = fmt.Errorf("%w: %d nanoseconds", ErrCorrupt, nsec)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec))
}
