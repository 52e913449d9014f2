package poolwatch

import "time"

// The control law: the effective budget is what the pool can give lanegate,
// its size less what the pool's other clients hold or wait for, at most the
// static budget and at least zero.
//
// PgBouncer cannot say which of its clients are lanegate's requests, but
// lanegate knows how many it has in flight. Every client that holds a
// server connection (sv_active) or waits for one (cl_waiting) is either one
// of those requests or somebody else's, so
//
//	others ≥ sv_active + cl_waiting − in flight
//
// with equality when each of lanegate's requests is at the database,
// holding or waiting for a connection, as a Django request is in session
// pooling from its first query to its end. The estimate errs only the
// other way, when some of lanegate's requests are between queries: then
// lanegate is not using the pool as much as its in-flight count says,
// which is the spare capacity the error lets it use.
//
// What makes the law stable is that lanegate's own load cancels out: each
// request it admits adds one to in flight and, once at the database, one
// to sv_active or cl_waiting. So the estimate of the others does not move
// when the effective budget does, and there is no loop through lanegate's
// own traffic to oscillate: the budget moves only when the others do. (An
// AIMD law probes instead: it raises the budget until clients wait in
// PgBouncer, then cuts it, so by design it makes somebody wait there
// every cycle, which is what lanegate is for avoiding.)
//
// Decreases are immediate: a reading that shows the others holding more
// lowers the budget at once, so the queue does not form in PgBouncer.
// Increases wait until the others have held less for a whole window: the
// estimate is a sample, and a sample taken while some of lanegate's
// requests are between queries reads low. Taking the largest estimate of
// the window makes the budget follow the others' bursts at once and their
// departures after the window, and no faster.
//
// The floor is zero. When the others hold the whole pool, a request
// admitted would wait in PgBouncer, where query_wait_timeout ends the wait
// with an error Django turns into a 500, and where lanegate can neither
// see nor order it. Admitting none keeps every waiter in lanegate's own
// line, which holds no connection and ends in a shed with Retry-After (a
// login keeps its place); the first connection the others free is
// lanegate's within one poll.
type law struct {
	// static is the configured budget, the most the law ever gives.
	static int
	// window is how long an estimate of the others is remembered.
	window time.Duration
	// seen are the recent estimates, oldest first.
	seen []sample
}

// sample is one estimate of what the others hold, at a moment.
type sample struct {
	at     time.Time
	others int
}

// others estimates what the pool's other clients hold or wait for, from
// one reading and lanegate's requests in flight when it was taken.
func others(p Pool, inFlight int) int {
	return min(max(p.SvActive+p.ClWaiting-inFlight, 0), p.Size)
}

// next returns the effective budget after a reading of pool p taken at now
// with inFlight of lanegate's requests in flight, and the estimate of the
// others it used.
func (l *law) next(now time.Time, p Pool, inFlight int) (budget, held int) {
	o := others(p, inFlight)
	cut := now.Add(-l.window)
	drop := 0
	for drop < len(l.seen) && l.seen[drop].at.Before(cut) {
		drop++
	}
	l.seen = append(l.seen[:0], l.seen[drop:]...)
	l.seen = append(l.seen, sample{at: now, others: o})
	held = 0
	for _, s := range l.seen {
		held = max(held, s.others)
	}
	return min(max(p.Size-held, 0), l.static), held
}

// reset forgets the estimates, when readings stop and the law is no longer
// in force: stale samples must not steer the budget when they resume.
func (l *law) reset() { l.seen = l.seen[:0] }
