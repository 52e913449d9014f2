package fleet

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/lanegate/lanegate/admission"
)

//go:embed line.lua
var lineLua string

// The login line a fleet shares.
//
// One lanegate keeps its login line in memory (admission's room): places
// ranked by first arrival, the check that a ticket is not used twice at
// once, the records of tickets used up. A fleet keeps the same facts in
// Redis, under the fleet's hash tag, so that a ticket one replica issued
// ranks its holder the same on every other:
//
//   - line, a sorted set of every place (waiting at a member, or away with
//     its ticket) by first arrival: the places ahead of a login;
//   - waiting and present, the places whose logins wait at a member now,
//     and which member: the lease script gives the login lane's free slots
//     to the members where the logins that have waited longest wait, so
//     logins are admitted in the fleet's arrival order, not each replica's;
//   - lapse, when each place lapses if nobody reports on it (a member that
//     died with logins waiting, a login that never came back);
//   - used, the places whose tickets were used up, refused until no ticket
//     for them can rank anyone.
//
// A login's arrival is one round trip (Arrive), which ranks it by Redis's
// clock, checks its ticket, counts the places ahead and marks it waiting.
// How it left (admitted, sent away, gone) is reported afterwards, in
// batches, off the request's path (Run); so is each waiting-page place.
// Nothing else of the line touches Redis per request.
//
// While Redis cannot be reached, Arrive fails at once (the coordinator
// says so) or within its timeout, and the proxy ranks the login in its
// replica's own line: fail-static, as the budget.
type Line struct {
	client  redis.Scripter
	script  *redis.Script
	keys    []string
	member  string
	opts    LineOptions
	reports chan report

	arrived, failed, reported, dropped atomic.Uint64
}

// LineOptions configure a Line.
type LineOptions struct {
	// Timeout bounds Arrive's round trip; a login never waits longer on
	// Redis than this before it is ranked locally.
	Timeout time.Duration
	// Hold is how long a login may wait in line (the login lane's queue
	// timeout): a waiting place not reported on by then, and a grace
	// after, lapses.
	Hold func() time.Duration
	// Up, when set, says whether the fleet answers now (the coordinator's
	// lease is in force): while it does not, Arrive does not try.
	Up func() bool
	// Log receives the line's few lines; nil discards them.
	Log *zap.Logger
}

// lineKeys are the line's keys for fleet, in line.lua's order; waiting
// and present are also the lease script's.
func lineKeys(fleet string) []string {
	p := "lanegate:{" + fleet + "}:"
	return []string{p + "line", p + "waiting", p + "present", p + "lapse", p + "used"}
}

// report is one login's way out of the line, or a waiting-page place.
type report struct {
	op      string
	id      uint64
	arrival time.Time
	keep    time.Duration
}

// reportBacklog bounds the reports waiting to be sent. Past it they are
// dropped: each place then lapses on its own in Redis.
const reportBacklog = 4096

// reportBatch is the most reports sent in one script call.
const reportBatch = 128

// lineKeyTTL is how long the line's keys outlive their last write: longer
// than any place can rank anyone.
const lineKeyTTL = 2 * admission.MaxPlaceAge

// ErrLineDown is Arrive's error while the fleet does not answer.
var ErrLineDown = errors.New("fleet: line: the fleet is not reachable")

// NewLine returns member's view of fleet's login line, kept in Redis
// through client. Reports are sent only while Run runs.
func NewLine(client redis.Scripter, fleet, member string, opts LineOptions) (*Line, error) {
	if client == nil {
		return nil, errors.New("fleet: line: no Redis client")
	}
	if err := checkMember(member); err != nil {
		return nil, fmt.Errorf("fleet: line: %w", err)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 250 * time.Millisecond
	}
	if opts.Hold == nil {
		opts.Hold = func() time.Duration { return 30 * time.Second }
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	return &Line{
		client: client, script: redis.NewScript(lineLua), keys: lineKeys(fleet),
		member: memberPrefix + member, opts: opts, reports: make(chan report, reportBacklog),
	}, nil
}

// Arrive ranks a login arriving now in the fleet's line: with a ticket (id
// and the first arrival it vouches for) at its place, unless the place
// waits at a member now, was used up, or is too old; otherwise in a new
// place at the back. One round trip.
func (l *Line) Arrive(ctx context.Context, id uint64, arrival time.Time) (admission.Rank, error) {
	if l.opts.Up != nil && !l.opts.Up() {
		return admission.Rank{}, ErrLineDown
	}
	var at int64
	if id != 0 && !arrival.IsZero() {
		at = arrival.UnixMicro()
	}
	hold := l.opts.Hold() + 30*time.Second
	ctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	res, err := l.script.Run(ctx, l.client, l.keys, "arrive", l.member, lineKeyTTL.Milliseconds(),
		strconv.FormatUint(id, 10), at, strconv.FormatUint(rand.Uint64()|1, 10),
		hold.Microseconds(), admission.MaxPlaceAge.Microseconds()).Slice()
	if err != nil {
		l.failed.Add(1)
		return admission.Rank{}, fmt.Errorf("fleet: line: arrive: %w", err)
	}
	r, err := parseRank(res)
	if err != nil {
		l.failed.Add(1)
		return admission.Rank{}, fmt.Errorf("fleet: line: arrive: %w", err)
	}
	l.arrived.Add(1)
	return r, nil
}

// parseRank reads the arrive step's answer.
func parseRank(res []any) (admission.Rank, error) {
	if len(res) != 4 {
		return admission.Rank{}, fmt.Errorf("%d values, want 4", len(res))
	}
	ids, ok1 := res[0].(string)
	ats, ok2 := res[1].(string)
	ahead, ok3 := res[2].(int64)
	fresh, ok4 := res[3].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return admission.Rank{}, fmt.Errorf("answer %v", res)
	}
	id, err := strconv.ParseUint(ids, 10, 64)
	if err != nil || id == 0 {
		return admission.Rank{}, fmt.Errorf("place %q", ids)
	}
	at, err := strconv.ParseInt(ats, 10, 64)
	if err != nil {
		return admission.Rank{}, fmt.Errorf("arrival %q", ats)
	}
	return admission.Rank{ID: id, Arrival: time.UnixMicro(at), Ahead: int(ahead), Fresh: fresh == 1}, nil
}

// Used reports that the login ranked r was admitted: its place leaves the
// line, and its tickets are refused fleet-wide from now on.
func (l *Line) Used(r admission.Rank) {
	l.report(report{op: "used", id: r.ID, arrival: r.Arrival,
		keep: time.Until(r.Arrival.Add(admission.MaxPlaceAge))})
}

// Away reports that the login ranked r left the line keeping its place
// until until: sent away with a ticket, or gone before its turn.
func (l *Line) Away(r admission.Rank, until time.Time) {
	l.report(report{op: "away", id: r.ID, arrival: r.Arrival, keep: time.Until(until)})
}

// Drop reports that the login ranked r left the line without a place.
func (l *Line) Drop(r admission.Rank) { l.report(report{op: "drop", id: r.ID, arrival: r.Arrival}) }

// Kept reports a place kept for someone on the waiting page, so that it
// counts ahead of later logins on every replica.
func (l *Line) Kept(p admission.Place) {
	l.report(report{op: "keep", id: p.ID, arrival: p.Arrival, keep: time.Until(p.Until)})
}

func (l *Line) report(r report) {
	if r.keep <= 0 && r.op != "drop" {
		r.keep = time.Millisecond
	}
	select {
	case l.reports <- r:
	default:
		l.dropped.Add(1)
	}
}

// Run sends reports in batches until ctx ends, then what is left, within
// the line's timeout. A batch taken is sent even if ctx ends meanwhile:
// what was reported before then is sent.
func (l *Line) Run(ctx context.Context) {
	batch := make([]report, 0, reportBatch)
	for {
		select {
		case r := <-l.reports:
			batch = l.take(append(batch[:0], r))
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.opts.Timeout)
			l.send(sctx, batch)
			cancel()
			continue
		case <-ctx.Done():
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.opts.Timeout)
		defer cancel()
		for {
			if batch = l.take(batch[:0]); len(batch) == 0 {
				return
			}
			l.send(fctx, batch)
		}
	}
}

// take adds to batch what reports wait now, up to a batch's worth.
func (l *Line) take(batch []report) []report {
	for len(batch) < reportBatch {
		select {
		case r := <-l.reports:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

func (l *Line) send(ctx context.Context, batch []report) {
	args := make([]any, 0, 3+4*len(batch))
	args = append(args, "report", l.member, lineKeyTTL.Milliseconds())
	for _, r := range batch {
		args = append(args, r.op, strconv.FormatUint(r.id, 10), r.arrival.UnixMicro(), max(r.keep.Microseconds(), 0))
	}
	if err := l.script.Run(ctx, l.client, l.keys, args...).Err(); err != nil {
		// Each place lapses on its own; a used one is then refused only
		// by the replica that admitted it.
		l.dropped.Add(uint64(len(batch)))
		l.opts.Log.Debug("fleet: line: reports lost", zap.Int("reports", len(batch)), zap.Error(err))
		return
	}
	l.reported.Add(uint64(len(batch)))
}

// LineStats are the line's counters.
type LineStats struct {
	// Arrived counts logins ranked by the fleet; Failed, arrivals that
	// could not be and were ranked locally; Reported and Dropped, reports
	// sent and lost.
	Arrived, Failed, Reported, Dropped uint64
}

// Stats returns the line's counters.
func (l *Line) Stats() LineStats {
	return LineStats{Arrived: l.arrived.Load(), Failed: l.failed.Load(), Reported: l.reported.Load(), Dropped: l.dropped.Load()}
}

// Gone reports that the login ranked r left before its turn: its place is
// kept for a while, as the controller keeps it, for a retry.
func (l *Line) Gone(r admission.Rank) {
	l.Away(r, time.Now().Add(max(2*l.opts.Hold(), time.Minute)))
}
