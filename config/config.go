// Package config reads lanegate's settings from LANEGATE_* environment
// variables, optionally under a dotenv file, and checks them as a whole.
//
// Most admission numbers need not be set: they are derived from the size of
// the PgBouncer pool the app draws from, because every request lanegate lets
// through may hold one pooled connection. Load reports every problem at once,
// each naming the variable to fix, so a bad deploy fails in one round trip.
package config

import (
	"net/netip"
	"net/url"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// prefix starts the name of every variable lanegate reads.
const prefix = "LANEGATE_"

// Mode selects what the admission controller does with what it decides;
// see admission.Mode.
type Mode = admission.Mode

// The admission modes, as LANEGATE_ADMISSION names them.
const (
	ModeEnforce = admission.Enforce
	ModeShadow  = admission.Shadow
	ModeOff     = admission.Off
)

// ParseMode returns the mode named s ("enforce", "shadow" or "off").
func ParseMode(s string) (Mode, error) { return admission.ParseMode(s) }

// Config is lanegate's whole configuration, as Load reads it.
//
// Fields tagged env are filled from LANEGATE_<name>. The tag desc documents
// a variable and derived describes how its default is computed when that
// depends on other variables; Variables and the README table are generated
// from these tags, so they are the one place to document a variable.
//
// The tag reload:"live" marks a variable whose change a reload (SIGHUP)
// applies to the running process: it acts through Limits, which the
// admission controller's Reconfigure replaces whole, through the admission
// mode, or through the lane path rules. Every other variable is fixed at
// start, and RestartOnly names it when a reload finds it changed. Untagged
// means restart-only, so a new variable is never claimed to be live by
// accident: tag it only once a changed value really takes effect without a
// restart.
//
// Pointer fields are nil when their variable is unset, meaning "derive it":
// read admission sizes through Limits, which fills them in.
type Config struct {
	// Server is the listener clients connect to.
	Server Server
	// Upstream is the app server lanegate forwards to.
	Upstream Upstream
	// Admin is the operators' HTTP endpoint.
	Admin Admin
	// Admission sizes the lanes; read it through Limits.
	Admission Admission
	// Routes sorts request paths into lanes.
	Routes Routes
	// Session configures the cache of Django's validated sessions.
	Session Session
	// PgBouncer configures the pool watcher.
	PgBouncer PgBouncer
	// Fleet configures the replicas' shared budget.
	Fleet Fleet
	// Log configures logging.
	Log Log

	// warnings are problems Load found that do not stop lanegate.
	warnings []string

	// fromPool maps each variable WithPool took from PgBouncer to its
	// provenance comment.
	fromPool map[string]string

	// origin maps each variable that was set (non-empty) to where:
	// "" for the environment, else the env file's path. Print reports it.
	origin map[string]string
}

// Server configures the client-facing listener.
type Server struct {
	// Listen is the client-facing address, host:port.
	Listen string `env:"LISTEN" envDefault:":8080" desc:"Address lanegate listens on for client traffic, host:port."`
	// TLSCertFile and TLSKeyFile, when set, make the listener serve HTTPS.
	TLSCertFile string `env:"TLS_CERT_FILE" desc:"PEM certificate chain. Set it with LANEGATE_TLS_KEY_FILE to serve HTTPS; leave both empty when a load balancer terminates TLS."`
	// TLSKeyFile is the private key for TLSCertFile.
	TLSKeyFile string `env:"TLS_KEY_FILE" desc:"PEM private key for LANEGATE_TLS_CERT_FILE."`
	// TrustedProxies are the peers whose X-Forwarded-For is believed when
	// finding a client's address.
	TrustedProxies []netip.Prefix `env:"TRUSTED_PROXIES" desc:"Comma-separated CIDRs (a bare IP means that one address) of proxies in front of lanegate whose X-Forwarded-For names the client. Empty trusts none: the TCP peer is the client. Per-client login limits key on this address."`
	// ReadHeaderTimeout bounds how long a client may take to send headers.
	ReadHeaderTimeout time.Duration `env:"READ_HEADER_TIMEOUT" envDefault:"10s" desc:"Longest a client may take to send its request headers; stops slow clients from holding connections."`
	// IdleTimeout is how long an idle keep-alive connection stays open.
	IdleTimeout time.Duration `env:"IDLE_TIMEOUT" envDefault:"120s" desc:"How long an idle keep-alive client connection is kept open."`
	// MaxConns caps the client connections open at once.
	MaxConns int `env:"MAX_CONNS" envDefault:"10000" desc:"Most client connections open at once, as HAProxy's maxconn: at the limit lanegate stops accepting and new connections wait in the kernel's backlog, so idle or slow clients cannot exhaust file descriptors or memory. Keep it under the process's file limit (ulimit -n), less what the upstream and Redis connections need."`
	// MaxHeaderBytes caps the size of a request's headers.
	MaxHeaderBytes int `env:"MAX_HEADER_BYTES" envDefault:"32768" desc:"Largest request head (request line and headers) accepted, in bytes; a larger one is refused with 431. Values under 4097 act as 4097, the least Go's HTTP server can enforce."`
	// BufferBodyBytes is the largest request body read whole before
	// admission.
	BufferBodyBytes int64 `env:"BUFFER_BODY_BYTES" envDefault:"65536" desc:"Request bodies with a Content-Length up to this many bytes (login forms, most POSTs) are read whole before the request is queued or forwarded, as nginx's proxy_request_buffering and HAProxy's http-buffer-request do: a slow upload then holds no slot, and a client that leaves while queued is noticed at once (Go's server notices a disconnect only once the body is read). Larger and chunked bodies stream. 0 turns it off."`
	// BufferBodyTotalBytes bounds the memory of all request bodies read
	// before admission at once.
	BufferBodyTotalBytes int64 `env:"BUFFER_BODY_TOTAL_BYTES" envDefault:"67108864" desc:"Most memory, in bytes, all the request bodies being read before admission (see LANEGATE_BUFFER_BODY_BYTES) may hold together. Each buffer grows as its bytes arrive, so a client that announces a body and sends nothing holds 512 bytes, not its Content-Length. Past the bound, further bodies stream as larger ones do, rather than being refused: they are admitted before their body is in, so a slow upload then holds a slot. The default is a thousand 64 KiB bodies at once; 0 means no bound."`
	// MaxBodyBytes caps a request body; 0 means no limit.
	MaxBodyBytes int64 `env:"MAX_BODY_BYTES" envDefault:"67108864" desc:"Largest request body accepted, in bytes (larger ones are refused with 413); 0 means unlimited."`
	// BodyReadTimeout bounds each pause while a client sends its body.
	BodyReadTimeout time.Duration `env:"BODY_READ_TIMEOUT" envDefault:"30s" desc:"Longest a client may pause while sending a request body. Past it the request is answered 408 and its slot, held since it was admitted, is freed; without it a client that stalls mid-upload holds a slot until it disconnects. 0 disables it."`
	// ClientSendTimeout bounds how long a client may accept no bytes of
	// its response.
	ClientSendTimeout time.Duration `env:"CLIENT_SEND_TIMEOUT" envDefault:"60s" desc:"Longest a client may accept no bytes of its response, as nginx's send_timeout and HAProxy's timeout client: past it the connection is cut, and a response still relayed from the app frees its slot. Counted in lanegate_client_send_timeouts_total. 0 disables it."`
	// ShutdownTimeout is how long in-flight requests may finish on SIGTERM.
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s" desc:"On SIGTERM, how long in-flight requests may run to completion before connections are closed."`
}

// Upstream configures the connection to the app server.
type Upstream struct {
	// URL is the app server's base URL: scheme and host only. Callers must
	// not modify it; Config values share it.
	URL *url.URL `env:"UPSTREAM" envDefault:"http://127.0.0.1:8000" desc:"Base URL of the Django app server: http or https, a host, no path."`
	// DialTimeout bounds connecting to the upstream.
	DialTimeout time.Duration `env:"UPSTREAM_DIAL_TIMEOUT" envDefault:"2s" desc:"Longest wait to open a connection to the upstream."`
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// headers after the request is sent.
	ResponseHeaderTimeout time.Duration `env:"UPSTREAM_RESPONSE_HEADER_TIMEOUT" envDefault:"60s" desc:"Longest wait for the upstream's response headers once the request is sent."`
	// StallTimeout bounds the upstream's silence mid-exchange, so a hung
	// app frees its slot instead of holding it for ever.
	StallTimeout time.Duration `env:"UPSTREAM_STALL_TIMEOUT" envDefault:"60s" desc:"Longest the upstream may stall mid-exchange: stop reading the request body, or pause between bytes of its response body (and, for an HTTPS upstream or a WebSocket, any silence). Past it the exchange is cut and the slot freed: a 504 if the client has had nothing yet, else a truncated response on a closed connection. HAProxy's timeout server, nginx's proxy_read_timeout."`
	// TimeoutHold keeps a timed-out request's slot while the app still
	// works on it.
	TimeoutHold time.Duration `env:"UPSTREAM_TIMEOUT_HOLD" envDefault:"60s" desc:"After a 504 for want of response headers, or once a client leaves a request the app was already given, the request's slot stays taken until the app is done with it (its late answer arrives, or it closes the connection, as gunicorn does when it kills a worker), up to this long. The app holds its database connection meanwhile: freeing the slot at the 504 would admit another request to wait in PgBouncer's queue instead of lanegate's. 0 frees it with the 504. Plain-HTTP upstreams only."`
	// ResponseBufferBytes is the largest response buffered whole.
	ResponseBufferBytes int64 `env:"RESPONSE_BUFFER_BYTES" envDefault:"1048576" desc:"Largest response body read from the app into memory as fast as the app sends it, as nginx's proxy_buffering does: the request's slot is freed as soon as the app is done, and the client is fed at its own pace. Django holds its database connection until gunicorn has written the last byte, so without it a slow client's pace is the pool's. Larger responses, text/event-stream, responses with X-Accel-Buffering: no, and protocol upgrades are relayed as they come and hold their slot to the end. 0 turns buffering off; at most 67108864 (64 MiB)."`
	// ResponseBufferTotalBytes bounds all buffered responses together.
	ResponseBufferTotalBytes int64 `env:"RESPONSE_BUFFER_TOTAL_BYTES" envDefault:"134217728" desc:"Memory all buffered responses may hold together (128 MiB by default: 4096 responses of up to 32 KiB, the unit memory is taken in, or 128 of 1 MiB, on their way to slow clients). Past it, responses are relayed unbuffered (lanegate_response_buffer_overflows_total{reason=\"full\"}). At least LANEGATE_RESPONSE_BUFFER_BYTES."`
	// IdleTimeout closes idle keep-alive connections to the upstream.
	IdleTimeout time.Duration `env:"UPSTREAM_IDLE_TIMEOUT" envDefault:"1s" desc:"How long an idle keep-alive connection to the upstream is kept. Keep it below the app server's own keep-alive (gunicorn: 2s), or a POST may be sent on a connection the server is closing and fail with 502."`
}

// Admin configures the operators' endpoint (metrics, health, live limits).
type Admin struct {
	// Listen is the admin server's address, host:port.
	Listen string `env:"ADMIN_LISTEN" envDefault:"127.0.0.1:9090" desc:"Address of the admin server (metrics, health, live limits). Anywhere but loopback it needs LANEGATE_ADMIN_TOKEN."`
	// Token is the bearer token the admin server demands; empty means
	// none, which Load allows only on a loopback address.
	Token string `env:"ADMIN_TOKEN" secret:"true" desc:"Bearer token the admin server requires. Mandatory when LANEGATE_ADMIN_LISTEN is not a loopback address (127.0.0.0/8, ::1, localhost); an empty host such as :9090 listens everywhere. Set it in the real environment, not in a file."`
}

// Admission holds the inputs of the admission policy. Unset pointer fields
// are derived: use Config.Limits for the values in force.
type Admission struct {
	// Mode says whether limits are enforced, only measured, or ignored.
	Mode Mode `env:"ADMISSION" envDefault:"enforce" reload:"live" desc:"enforce queues and sheds requests; shadow admits everything but records what enforce would have shed; off is a plain reverse proxy."`
	// DBPoolSize is PgBouncer's server-connection pool for the app.
	DBPoolSize int `env:"DB_POOL_SIZE" envDefault:"20" reload:"live" desc:"Server connections PgBouncer keeps for the app's database and user (its default_pool_size). The budget and lane sizes are derived from it."`
	// PoolHeadroom is the percentage of the pool kept for clients that do
	// not pass through lanegate.
	PoolHeadroom int `env:"POOL_HEADROOM" envDefault:"20" reload:"live" desc:"Percent of the pool (0 to 99) left for its other clients, which do not pass through lanegate: workers, cron, migrations, admin shells. Unset while LANEGATE_PGBOUNCER_URL is set (and LANEGATE_PGBOUNCER_FOLLOW true), it is 0: the watcher measures what those clients hold and gives way to it."`
	// Budget is the number of requests in flight to the upstream across
	// all lanes; nil derives it from the pool.
	Budget *int `env:"BUDGET" derived:"pool - ceil(pool * headroom / 100), at least 1 (16 for a pool of 20)" reload:"live" desc:"Requests in flight to the app at once, across all lanes. Each may hold a pooled connection, so by default it is the pool less the headroom; past it, requests queue in lanegate instead of in PgBouncer."`
	// UpstreamCPUs is the app server's core count; nil means this host's.
	UpstreamCPUs *int `env:"UPSTREAM_CPUS" derived:"CPUs of the machine lanegate runs on" reload:"live" desc:"CPU cores serving the app. The login lane's max follows it: a login is CPU-bound password hashing, so more logins than cores only queue inside the app while holding connections. Set it when lanegate does not share the app's machine."`

	// Login is the login lane.
	Login LoginLane `envPrefix:"LOGIN_"`
	// Core is the lane of ordinary pages and API calls.
	Core CoreLane `envPrefix:"CORE_"`
	// Export is the lane of slow reports and exports.
	Export ExportLane `envPrefix:"EXPORT_"`

	// LoginRate paces logins from all clients together, per second.
	LoginRate float64 `env:"LOGIN_RATE" envDefault:"10" reload:"live" desc:"Logins per second admitted from all clients together (a token bucket); 0 disables it."`
	// LoginBurst is the global login bucket's size.
	LoginBurst int `env:"LOGIN_BURST" envDefault:"20" reload:"live" desc:"Logins admitted at once after a quiet spell, under LANEGATE_LOGIN_RATE."`
	// LoginPerClientRate paces the logins of each client address.
	LoginPerClientRate float64 `env:"LOGIN_PER_CLIENT_RATE" envDefault:"0" reload:"live" desc:"Logins per second from one client address; 0, the default, disables it because load tests and office NATs send many logins from one address."`
	// LoginPerClientBurst is each client's login bucket size.
	LoginPerClientBurst int `env:"LOGIN_PER_CLIENT_BURST" envDefault:"5" reload:"live" desc:"Logins one client may make at once after a quiet spell, under LANEGATE_LOGIN_PER_CLIENT_RATE."`
	// LoginClientsMax bounds the per-client buckets remembered.
	LoginClientsMax int `env:"LOGIN_CLIENTS_MAX" envDefault:"10000" reload:"live" desc:"Client addresses whose login buckets are remembered; the least recently seen is forgotten first."`

	// AnonMax caps anonymous core requests in flight; nil derives it.
	AnonMax *int `env:"ANON_MAX" derived:"core max / 2, at least 1, when LANEGATE_SESSION_STORE is not off; else 0 (no cap)" reload:"live" desc:"Most core requests without a validated session in flight at once, so an anonymous flood leaves slots for logged-in users; waiting logged-in requests are also admitted before anonymous ones. 0 means no cap. Needs the session cache: without it no request is known to be logged in."`

	// WaitingRoom turns on tickets and the waiting page for logins.
	WaitingRoom bool `env:"WAITING_ROOM" envDefault:"true" desc:"Keep logins' places in line across retries: a login sent away gets a signed ticket (cookie and Lanegate-Ticket header) that ranks its retry by its first arrival, and a person opening the login page during a storm sees a waiting page with their place that moves on by itself. false: logins sent away retry at the back."`
	// TicketSecret signs waiting-room tickets.
	TicketSecret string `env:"TICKET_SECRET" secret:"true" desc:"Secrets that sign waiting-room tickets, written like LANEGATE_IDENTITY_SECRET. Unset: LANEGATE_IDENTITY_SECRET when set, else a random secret made at start, so tickets do not survive a restart or cross replicas; set it when several lanegates serve one site."`

	// PgBouncerQueryWaitTimeout mirrors PgBouncer's query_wait_timeout;
	// nil or 0 means there is none to stay under.
	PgBouncerQueryWaitTimeout *time.Duration `env:"PGBOUNCER_QUERY_WAIT_TIMEOUT" desc:"PgBouncer's query_wait_timeout, with a unit (120s, not 120). lanegate's own queues hold no database connection, so they may be longer; but when LANEGATE_BUDGET exceeds LANEGATE_DB_POOL_SIZE, admitted requests can queue in PgBouncer too, and a warning names every lane whose queue timeout is not shorter. Unset or 0: no check."`
}

// The lanes' settings have one type each, rather than one shared type,
// because the tags that document them (and the defaults) differ per lane.
// Their reserved, max and queue are derived from the budget when unset; see
// Config.Limits for the rules and the README for the reasons.

// LoginLane is the login lane: authentication requests that hash a
// password on the app's CPU while holding a database connection.
type LoginLane struct {
	// Reserved slots are for logins only; nil derives them.
	Reserved *int `env:"RESERVED" derived:"budget/8, at least 1 and at most the lane's max; 0 when the budget is 1" reload:"live" desc:"Slots only logins may use, so users can still sign in while pages fill the budget."`
	// Max caps logins in flight; nil derives it.
	Max *int `env:"MAX" derived:"min(LANEGATE_UPSTREAM_CPUS, budget/2), at least 1" reload:"live" desc:"Most logins in flight, at least 1. Hashing is CPU-bound: beyond one login per core they only queue inside the app holding a connection, and half the budget keeps logins from crowding out pages."`
	// Queue is how many logins may wait; nil derives it.
	Queue *int `env:"QUEUE" derived:"8 * budget" reload:"live" desc:"Logins that may wait for a slot; more are refused with 503."`
	// QueueTimeout is the longest a login is held in line: its
	// variable is LANEGATE_LOGIN_MAX_HOLD.
	QueueTimeout time.Duration `env:"MAX_HOLD" envDefault:"30s" reload:"live" desc:"Longest a login is held open in lanegate's line waiting for its turn, which holds no database connection: set it to what your clients tolerate. A login whose turn is further away is answered with Retry-After and, with LANEGATE_WAITING_ROOM, a ticket that keeps its place."`
}

// CoreLane is the lane of ordinary pages and API calls.
type CoreLane struct {
	// Reserved slots are for ordinary requests only; nil derives them.
	Reserved *int `env:"RESERVED" derived:"min(budget/2, budget - login reserved - export reserved), at most the lane's max" reload:"live" desc:"Slots only ordinary pages and API calls may use, so logins and exports can never take the whole budget."`
	// Max caps ordinary requests in flight; nil derives it.
	Max *int `env:"MAX" derived:"budget" reload:"live" desc:"Most ordinary requests in flight, at least 1; by default they may use every slot not reserved for another lane."`
	// Queue is how many ordinary requests may wait; nil derives it.
	Queue *int `env:"QUEUE" derived:"8 * budget" reload:"live" desc:"Ordinary requests that may wait for a slot; more are refused with 503."`
	// QueueTimeout is the longest an ordinary request waits for a slot.
	QueueTimeout time.Duration `env:"QUEUE_TIMEOUT" envDefault:"5s" reload:"live" desc:"Longest an ordinary request waits for a slot before it is refused; short, because a page that slow is abandoned or retried anyway."`
}

// ExportLane is the lane of slow, heavy work such as reports and exports.
type ExportLane struct {
	// Reserved slots are for exports only; nil means none.
	Reserved *int `env:"RESERVED" derived:"0" reload:"live" desc:"Slots only exports may use. None by default: exports borrow idle slots and wait when there are none."`
	// Max caps exports in flight; nil derives it.
	Max *int `env:"MAX" derived:"budget/4, at least 1" reload:"live" desc:"Most exports in flight, so slow reports can never hold most of the pool. 0 closes the lane: exports are refused at once with 503."`
	// Queue is how many exports may wait; nil derives it.
	Queue *int `env:"QUEUE" derived:"budget/2, at least 1" reload:"live" desc:"Exports that may wait for a slot; more are refused with 503."`
	// QueueTimeout is the longest an export waits for a slot.
	QueueTimeout time.Duration `env:"QUEUE_TIMEOUT" envDefault:"30s" reload:"live" desc:"Longest an export waits for a slot before it is refused."`
}

// Routes sorts requests into lanes by URL path. Each rule is a clean,
// decoded path; one ending in "/" covers everything below it.
type Routes struct {
	// LoginPaths are the login lane's path rules.
	LoginPaths []string `env:"LOGIN_PATHS" envDefault:"/accounts/login/,/accounts/signup/,/accounts/password/reset/" reload:"live" desc:"Comma-separated paths whose POSTs (any method but GET, HEAD, OPTIONS and TRACE) take the login lane: the views that hash passwords. A path ending in / covers everything below it; any other path matches exactly."`
	// ExportPaths are the export lane's path rules.
	ExportPaths []string `env:"EXPORT_PATHS" reload:"live" desc:"Comma-separated paths that take the export lane whatever the method, written like LANEGATE_LOGIN_PATHS. Empty: nothing is treated as an export."`
	// BypassPaths are served without admission for GET and HEAD.
	BypassPaths []string `env:"BYPASS_PATHS" envDefault:"/static/,/media/,/favicon.ico" reload:"live" desc:"Comma-separated paths whose GETs and HEADs skip admission because they never touch the database, such as static files; written like LANEGATE_LOGIN_PATHS."`
	// LoginRequiredPaths are redirected to LoginURL at the edge when the
	// request carries no session cookie at all.
	LoginRequiredPaths []string `env:"LOGIN_REQUIRED_PATHS" desc:"Comma-separated paths, written like LANEGATE_LOGIN_PATHS, that need a logged-in user: a GET or HEAD to them without any session cookie is redirected to LANEGATE_LOGIN_URL?next=<path> by lanegate without reaching Django. Requests with a cookie, valid or not, go to Django, which decides. Empty: none."`
	// LoginURL is where LoginRequiredPaths redirect.
	LoginURL string `env:"LOGIN_URL" envDefault:"/accounts/login/" desc:"Django's LOGIN_URL, where LANEGATE_LOGIN_REQUIRED_PATHS redirect: a path, or an absolute http(s) URL."`
}

// Session configures the session cache: lanegate remembers what Django
// granted about each session cookie and tells Django in a signed header,
// so Django can skip its django_session read. Django's side is the
// lanegate_django app in deploy/django.
type Session struct {
	// Store is off, memory or redis.
	Store string `env:"SESSION_STORE" envDefault:"off" desc:"off disables the session cache; memory keeps it in this process (one lanegate); redis shares it between replicas through LANEGATE_REDIS_URL. Needs LANEGATE_IDENTITY_SECRET and the lanegate_django app in Django."`
	// Cookie is Django's SESSION_COOKIE_NAME.
	Cookie string `env:"SESSION_COOKIE" envDefault:"sessionid" desc:"Name of Django's session cookie (its SESSION_COOKIE_NAME)."`
	// TTL bounds how long a grant is trusted before Django is asked again.
	TTL time.Duration `env:"SESSION_TTL" envDefault:"5m" desc:"Longest lanegate trusts what Django said about a session before asking again; never past the session's own expiry. It also bounds how long a session deleted outside any request (a shell, a cron job) stays trusted."`
	// MaxEntries bounds the memory store.
	MaxEntries int `env:"SESSION_MAX_ENTRIES" envDefault:"100000" desc:"Sessions the memory store keeps; the least recently used is forgotten first. About 300 bytes each."`
	// CoalesceWait is how long concurrent requests of one uncached session
	// wait for the first one's grant.
	CoalesceWait time.Duration `env:"SESSION_COALESCE_WAIT" envDefault:"100ms" desc:"When several requests of one uncached session arrive together, the first asks Django for a grant and the others wait this long for it before going to Django on their own."`
	// IdentitySecret is the keyring shared with Django.
	IdentitySecret string `env:"IDENTITY_SECRET" secret:"true" desc:"Secrets shared with Django's LANEGATE_IDENTITY_SECRET, comma-separated, each kid:secret (or a bare secret), at least 32 bytes each. The first signs; all verify, so a new secret can be rolled out before the old one is removed. Required unless LANEGATE_SESSION_STORE=off."`
	// RedisURL locates the shared store.
	RedisURL string `env:"REDIS_URL" secret:"true" desc:"Redis for LANEGATE_SESSION_STORE=redis and LANEGATE_FLEET=redis: redis://[user:pass@]host:port/db, rediss:// for TLS, redis+cluster://host:port?addr=host2:port for Cluster, redis+sentinel://host:port,host2:port/master/db for Sentinel. Give lanegate its own database."`
	// RedisTimeout bounds every Redis call.
	RedisTimeout time.Duration `env:"REDIS_TIMEOUT" envDefault:"100ms" desc:"Longest wait for Redis on a request (connect, read, write, pool). Past it the request goes to Django without identity, and Redis is left alone for a second."`
	// RedisPoolSize bounds connections to Redis.
	RedisPoolSize int `env:"REDIS_POOL_SIZE" envDefault:"32" desc:"Most connections to Redis; a stampede of sessions waits for one, up to LANEGATE_REDIS_TIMEOUT, instead of opening more."`
}

// PgBouncer configures the pool watcher: lanegate reads PgBouncer's admin
// console, sizes its budget from the pool and gives way to the pool's other
// clients.
type PgBouncer struct {
	// URLs are the admin consoles, one per PgBouncer process.
	URLs []string `env:"PGBOUNCER_URL" secret:"true" desc:"Comma-separated postgres:// URLs of PgBouncer's admin console (database pgbouncer), one per PgBouncer process, for a login listed in its stats_users: postgres://stats:password@127.0.0.1:6432/pgbouncer. Set, lanegate polls SHOW POOLS and admits under an effective budget that leaves the pool's other clients what they hold, and LANEGATE_DB_POOL_SIZE and LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT, when unset, come from PgBouncer. Empty: no watcher, the static budget."`
	// Database is the app's database as PgBouncer names it.
	Database string `env:"PGBOUNCER_DATABASE" desc:"The app's database as PgBouncer's [databases] section names it. Empty: the only database PgBouncer serves besides its console."`
	// User is the app's database user.
	User string `env:"PGBOUNCER_USER" desc:"The app's database user, whose pool is watched. Empty: every pool of LANEGATE_PGBOUNCER_DATABASE, summed."`
	// Poll is how often the console is read.
	Poll time.Duration `env:"PGBOUNCER_POLL" envDefault:"250ms" desc:"How often PgBouncer's console is read (SHOW POOLS, a few hundred bytes); the effective budget follows the pool within about one poll."`
	// Timeout bounds one poll.
	Timeout time.Duration `env:"PGBOUNCER_TIMEOUT" envDefault:"1s" desc:"Longest one read of the console may take, connecting included. Past it the read fails, and after reads have failed for LANEGATE_PGBOUNCER_STALE the watcher falls back to the static budget."`
	// Follow makes the effective budget follow the pool; false only
	// watches.
	Follow bool `env:"PGBOUNCER_FOLLOW" envDefault:"true" desc:"true: the budget lanegate admits under follows the pool (shrinks while the pool's other clients hold or wait for connections, grows back when they leave). false: the pool is only watched and shown (/status, metrics), as a dry run before letting it steer."`
	// Stale is how long the last good reading is trusted.
	Stale time.Duration `env:"PGBOUNCER_STALE" envDefault:"2s" desc:"How long the last good reading of the console steers the budget while reads fail; past it lanegate works on its static budget, reports itself degraded in /readyz (still 200) and /status, and logs it, until the console answers again."`
}

// Fleet configures fleet mode: several lanegates in front of one pool share
// its budget through Redis.
type Fleet struct {
	// Mode is off or redis.
	Mode string `env:"FLEET" envDefault:"off" desc:"off: this lanegate's budget is its own. redis: every lanegate with the same LANEGATE_FLEET_NAME and LANEGATE_REDIS_URL shares one budget and the lanes' reservations and maxima: each holds a lease on a share of each lane, renewed in Redis, in proportion to its demand. The login line is one: a login is ranked by the fleet on arrival (one Redis round trip), its ticket ranks it on any replica, and logins are admitted in the fleet's arrival order; the login rate is divided among the replicas by where logins arrive, and the per-client rate by their number. Needs LANEGATE_REDIS_URL and a shared LANEGATE_TICKET_SECRET (or LANEGATE_IDENTITY_SECRET)."`
	// Name keys the fleet in Redis.
	Name string `env:"FLEET_NAME" envDefault:"lanegate" desc:"The fleet's name: lanegates with the same name and Redis share one budget, so two sites (or staging and production) on one Redis need two names. Letters, digits, '.', '_' and '-'."`
	// InstanceID names this replica in the fleet.
	InstanceID string `env:"INSTANCE_ID" desc:"This replica's name in the fleet, unique within it. Empty: the host name, the process id and a random suffix."`
	// Lease is how long a replica's share outlives its last renewal.
	Lease time.Duration `env:"FLEET_LEASE" envDefault:"3s" desc:"How long a replica's share stays its own after its last renewal: a replica that dies or loses Redis keeps it this long, then the others take it over."`
	// Renew is how often a replica renews its lease.
	Renew time.Duration `env:"FLEET_RENEW" envDefault:"300ms" desc:"How often each replica renews its lease in Redis (one script call), reporting its demand and taking its new share; at most a third of LANEGATE_FLEET_LEASE, so that two renewals may fail before the lease runs out."`
}

// The fleet modes.
const (
	FleetOff   = "off"
	FleetRedis = "redis"
)

// Warnings returns what Load found doubtful but not wrong, one sentence
// each naming its variables; lanegate logs them at start.
func (c Config) Warnings() []string { return c.warnings }

// The session stores.
const (
	StoreOff    = "off"
	StoreMemory = "memory"
	StoreRedis  = "redis"
)

// Log configures logging.
type Log struct {
	// Format is "json" or "console".
	Format string `env:"LOG_FORMAT" envDefault:"json" desc:"json for log collectors, console for people."`
	// Level is "debug", "info", "warn" or "error".
	Level string `env:"LOG_LEVEL" envDefault:"info" desc:"Least severe level logged: debug, info, warn or error."`
	// Access turns on one log line per request.
	Access bool `env:"ACCESS_LOG" envDefault:"true" desc:"Log one line per request."`
	// RedactPaths are path prefixes whose remainder is never logged.
	RedactPaths []string `env:"LOG_REDACT_PATHS" envDefault:"/accounts/password/reset/key/,/accounts/confirm-email/,/reset/" desc:"Comma-separated path prefixes after which logged paths are cut, because links under them carry a secret in the path (allauth's password-reset and email-confirmation keys, Django's password-reset tokens)."`
}
