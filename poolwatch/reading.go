// Package poolwatch reads PgBouncer's admin console and turns what the pool
// says into the budget lanegate admits under.
//
// lanegate's static budget is a guess made when it starts: the pool's size
// less a headroom for the pool's other clients (workers, cron, migrations).
// When those clients take more than the headroom, the queue moves into
// PgBouncer, where lanegate cannot see it and where query_wait_timeout
// turns a wait into an HTTP 500. PgBouncer publishes the truth every moment
// (SHOW POOLS, SHOW DATABASES, SHOW CONFIG); the watcher polls it off the
// request path and gives the admission controller an effective budget that
// leaves the others what they hold.
package poolwatch

import "time"

// Pool is what PgBouncer's console says of the app's pool: one (database,
// user) pair, or every pool of the database when no user is named, summed
// over every console read.
type Pool struct {
	// Database and User name the pool; User is empty when the figures
	// are summed over every user of Database.
	Database string
	User     string

	// Size is the number of server connections the pool may open
	// (SHOW DATABASES pool_size, which is default_pool_size unless the
	// database sets its own), summed over pools and consoles.
	// ReservePool is the extra PgBouncer opens for a pool whose clients
	// have waited reserve_pool_timeout; lanegate does not count on it.
	Size        int
	ReservePool int

	// Client connections: linked to a server connection or idle
	// (ClActive), and waiting for one (ClWaiting).
	ClActive  int
	ClWaiting int

	// Server connections: linked to a client (SvActive), idle and ready
	// (SvIdle), idle and to be cleaned before reuse (SvUsed), being
	// tested (SvTested) and logging in (SvLogin).
	SvActive int
	SvIdle   int
	SvUsed   int
	SvTested int
	SvLogin  int

	// MaxWait is how long the oldest waiting client has waited (maxwait
	// and maxwait_us), the longest over pools and consoles. PgBouncer's
	// documentation calls a rising maxwait the sign that the pool cannot
	// keep up.
	MaxWait time.Duration

	// Mode is the pool's pool_mode: session, transaction or statement.
	Mode string
}

// Settings are the parts of PgBouncer's configuration (SHOW CONFIG) that
// lanegate's sizing and the doctor need, read from the first console.
type Settings struct {
	// QueryWaitTimeout is query_wait_timeout: how long a client may wait
	// for a server connection before PgBouncer disconnects it with an
	// error (which Django turns into a 500). Zero disables it.
	QueryWaitTimeout time.Duration
	// PoolMode is the default pool_mode.
	PoolMode string
	// MaxClientConn is max_client_conn: client connections PgBouncer
	// accepts in all, across every pool.
	MaxClientConn int
	// DefaultPoolSize is default_pool_size.
	DefaultPoolSize int
	// ReservePoolTimeout is reserve_pool_timeout.
	ReservePoolTimeout time.Duration
}

// Reading is one poll of every console.
type Reading struct {
	Pool     Pool
	Settings Settings
	// Consoles is how many consoles answered; a Reading is only made
	// when all of them did, because a sum that leaves one out would
	// hide the clients it serves.
	Consoles int
}
