package doctor

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/lanegate/lanegate/admission"
)

// budgetText says what the budget is and where it comes from.
func (d *run) budgetText() string {
	a, b := d.cfg.Admission, d.limits.Budget
	if a.Budget != nil {
		return fmt.Sprintf("budget %d (LANEGATE_BUDGET)", b)
	}
	pool := fmt.Sprintf("LANEGATE_DB_POOL_SIZE=%d", a.DBPoolSize)
	if a.DBPoolSize != d.opts.Config.Admission.DBPoolSize {
		pool = fmt.Sprintf("PgBouncer's pool_size %d", a.DBPoolSize)
	}
	return fmt.Sprintf("budget %d (%s less %d of headroom)", b, pool, a.DBPoolSize-b)
}

// budget checks that every request lanegate admits can have a pooled
// connection at once: past the pool, admitted requests queue inside
// PgBouncer, unseen by lanegate and under query_wait_timeout, which is the
// queue lanegate exists to keep them out of.
func (d *run) budget() {
	a := d.cfg.Admission
	b := d.limits.Budget
	if !d.read {
		// The static budget against the pool the operator wrote down.
		if b > a.DBPoolSize {
			d.add(Fail, checkBudget, fmt.Sprintf("%s > LANEGATE_DB_POOL_SIZE=%d: admitted requests would wait in PgBouncer, where lanegate cannot shed them",
				d.budgetText(), a.DBPoolSize),
				fmt.Sprintf("lower LANEGATE_BUDGET to at most %d, or unset it to derive it from the pool", a.DBPoolSize))
			return
		}
		d.add(OK, checkBudget, fmt.Sprintf("%s ≤ LANEGATE_DB_POOL_SIZE=%d (PgBouncer's own pool_size not read)", d.budgetText(), a.DBPoolSize), "")
		return
	}
	p := d.reading.Pool
	pool := poolName(p)
	switch {
	case p.Size < 1:
		d.add(Fail, checkBudget, fmt.Sprintf("PgBouncer gives pool %s no server connections (pool_size %d)", pool, p.Size),
			"check that LANEGATE_PGBOUNCER_DATABASE and LANEGATE_PGBOUNCER_USER name the app's pool, and its pool_size or default_pool_size in pgbouncer.ini")
	case b > p.Size:
		fix := fmt.Sprintf("unset LANEGATE_DB_POOL_SIZE, to read it from PgBouncer, or set it to %d", p.Size)
		if a.Budget != nil {
			fix = fmt.Sprintf("lower LANEGATE_BUDGET to at most %d, or raise the pool's pool_size (default_pool_size) in pgbouncer.ini to at least %d", p.Size, b)
		}
		d.add(Fail, checkBudget, fmt.Sprintf("%s > pool_size %d of %s: admitted requests would wait in PgBouncer, where lanegate cannot shed them",
			d.budgetText(), p.Size, pool), fix)
	case a.Budget == nil && a.DBPoolSize != p.Size:
		// Within the pool, but derived from a pool that is not there: the
		// headroom left to the pool's other clients is not the one meant.
		c := d.cfg
		c.Admission.DBPoolSize = p.Size
		d.add(Warn, checkBudget, fmt.Sprintf("%s ≤ pool_size %d of %s, but the pool is %d, not %d: derived from it the budget would be %d",
			d.budgetText(), p.Size, pool, p.Size, a.DBPoolSize, c.Limits().Budget),
			fmt.Sprintf("unset LANEGATE_DB_POOL_SIZE, to read it from PgBouncer, or set it to %d", p.Size))
	default:
		d.add(OK, checkBudget, fmt.Sprintf("%s ≤ pool_size %d of %s (now %d clients active, %d waiting)",
			d.budgetText(), p.Size, pool, p.ClActive, p.ClWaiting), "")
	}
}

// laneTimeoutVar names a lane's queue timeout variable; the login lane's
// is its hold.
func laneTimeoutVar(l admission.Lane) string {
	if l == admission.Login {
		return "LANEGATE_LOGIN_MAX_HOLD"
	}
	return "LANEGATE_" + strings.ToUpper(l.String()) + "_QUEUE_TIMEOUT"
}

// queryWait checks the lanes' queue timeouts against PgBouncer's
// query_wait_timeout where that matters, as config's own warning does with
// LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT, but with the value PgBouncer
// really has. It matters only when the budget exceeds the pool: lanegate's
// queues hold no connection, so only a request admitted beyond the pool
// waits in PgBouncer's queue, where the timeout ends it with an error.
func (d *run) queryWait() {
	if !d.read {
		d.notChecked(checkQueryWait)
		return
	}
	qw := d.reading.Settings.QueryWaitTimeout
	if set := d.opts.Config.Admission.PgBouncerQueryWaitTimeout; set != nil && *set != qw {
		d.add(Warn, checkQueryWait, fmt.Sprintf("LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=%s, but PgBouncer's query_wait_timeout is %s", *set, seconds(qw)),
			fmt.Sprintf("unset LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT, to read it from PgBouncer, or set it to %s", seconds(qw)))
	}
	if qw == 0 {
		d.add(Warn, checkQueryWait, "query_wait_timeout is 0 (disabled): a client that finds no free server connection waits in PgBouncer for ever, holding its gunicorn thread",
			"set query_wait_timeout in pgbouncer.ini (PgBouncer's default is 120)")
		return
	}
	b, size := d.limits.Budget, d.reading.Pool.Size
	if b <= size {
		d.add(OK, checkQueryWait, fmt.Sprintf("lane queue timeouts need not be below query_wait_timeout %s: budget %d ≤ pool_size %d, so admitted requests do not wait in PgBouncer",
			seconds(qw), b, size), "")
		return
	}
	var over []string
	for _, l := range admission.Lanes() {
		if t := d.limits.Lane[l].QueueTimeout; t >= qw {
			over = append(over, fmt.Sprintf("%s=%s", laneTimeoutVar(l), t))
		}
	}
	if len(over) == 0 {
		d.add(OK, checkQueryWait, fmt.Sprintf("every lane's queue timeout is below query_wait_timeout %s, as it must be while budget %d > pool_size %d",
			seconds(qw), b, size), "")
		return
	}
	d.add(Warn, checkQueryWait, fmt.Sprintf("%s not below query_wait_timeout %s while budget %d > pool_size %d: requests admitted beyond the pool wait in PgBouncer and may fail there",
		strings.Join(over, ", "), seconds(qw), b, size),
		fmt.Sprintf("lower them below %s, or bring the budget within the pool", seconds(qw)))
}

// maxClientConn checks that PgBouncer accepts a client connection for
// every request lanegate admits, besides the clients it already has: each
// admitted request may hold one, and past max_client_conn PgBouncer
// refuses them ("no more connections allowed"), which Django turns into a
// 500.
func (d *run) maxClientConn(ctx context.Context) {
	if !d.read {
		d.notChecked(checkMaxClientConn)
		return
	}
	b := d.limits.Budget
	// max_client_conn is per PgBouncer process; Settings come from the
	// first console, so this assumes every process has the same.
	consoles := max(d.reading.Consoles, 1)
	limit := d.reading.Settings.MaxClientConn * consoles
	what := fmt.Sprintf("max_client_conn %d", limit)
	if consoles > 1 {
		what = fmt.Sprintf("max_client_conn %d × %d PgBouncers", d.reading.Settings.MaxClientConn, consoles)
	}
	if limit < b {
		d.add(Fail, checkMaxClientConn, fmt.Sprintf("%s < budget %d: PgBouncer would refuse admitted requests (\"no more connections allowed\")", what, b),
			fmt.Sprintf("raise max_client_conn in pgbouncer.ini to at least %d, plus the pool's other clients", (b+consoles-1)/consoles))
		return
	}
	others, err := d.otherClients(ctx)
	if err != nil {
		d.add(Warn, checkMaxClientConn, fmt.Sprintf("%s ≥ budget %d, but the clients already connected are unknown: %v", what, b, err), "")
		return
	}
	need := b + others
	if limit < need {
		d.add(Warn, checkMaxClientConn, fmt.Sprintf("%s < budget %d + %d other clients connected now", what, b, others),
			fmt.Sprintf("raise max_client_conn in pgbouncer.ini to at least %d, more for those clients' peaks", (need+consoles-1)/consoles))
		return
	}
	d.add(OK, checkMaxClientConn, fmt.Sprintf("%s ≥ budget %d + %d other clients connected now", what, b, others), "")
}

// otherClients counts the client connections PgBouncer has now that are
// not lanegate's requests: every pool's clients (SHOW POOLS), less those
// of the app's pool up to the budget, which may be lanegate's own requests
// in flight and are counted once, in the budget. The admin console's
// clients (the doctor's own among them) are not counted.
func (d *run) otherClients(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	consoles, err := d.opts.Console.Show(ctx, "POOLS")
	if err != nil {
		return 0, errors.New(d.scrub(err))
	}
	p := d.reading.Pool
	all, app := 0, 0
	for _, rows := range consoles {
		for _, row := range rows {
			if row["database"] == "pgbouncer" {
				continue
			}
			n := 0
			for _, col := range []string{"cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req"} {
				v, err := intColumn(row, col)
				if err != nil {
					return 0, fmt.Errorf("SHOW POOLS: %w", err)
				}
				n += v
			}
			all += n
			if row["database"] == p.Database && (p.User == "" || row["user"] == p.User) {
				app += n
			}
		}
	}
	return all - min(app, d.limits.Budget), nil
}

// intColumn reads a counter of a console row; a column an older PgBouncer
// lacks counts as 0.
func intColumn(row map[string]string, col string) (int, error) {
	s, ok := row[col]
	if !ok || s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("column %s: %q is not a number", col, s)
	}
	return n, nil
}
