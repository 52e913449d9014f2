package admission

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// checkInvariants reports a violation of the controller's guarantees in
// state s: no lane above its max, the budget never exceeded, and every
// lane's unused reservation still free.
func checkInvariants(s uint64, lim *Limits) error {
	total, unused := 0, 0
	for _, l := range Lanes() {
		in := inFlightOf(s, l)
		if in > lim.Lane[l].Max {
			return errors.New(l.String() + " above its max")
		}
		total += in
		unused += max(0, lim.Lane[l].Reserved-in)
	}
	if total > lim.Budget {
		return errors.New("budget exceeded")
	}
	if lim.Budget-total < unused {
		return errors.New("a reservation is not available")
	}
	if lim.AnonMax > 0 && anonOf(s) > lim.AnonMax {
		return errors.New("anonymous requests above their cap")
	}
	if anonOf(s) > inFlightOf(s, Core) {
		return errors.New("more anonymous requests than core requests in flight")
	}
	return nil
}

// TestStressInvariants runs random arrivals, cancellations and releases
// (including double releases) from many goroutines while a checker reads
// the state word; every state observed must satisfy the invariants, and
// every request must be accounted for at the end.
func TestStressInvariants(t *testing.T) {
	var l Limits
	l.Budget = 8
	l.Lane[Login] = LaneLimits{Reserved: 2, Max: 3, Queue: 6, QueueTimeout: 2 * time.Millisecond}
	l.Lane[Core] = LaneLimits{Reserved: 3, Max: 8, Queue: 20, QueueTimeout: 5 * time.Millisecond}
	l.Lane[Export] = LaneLimits{Reserved: 0, Max: 2, Queue: 2, QueueTimeout: 3 * time.Millisecond}
	l.AnonMax = 3
	c, err := New(l)
	if err != nil {
		t.Fatal(err)
	}
	const workers, perWorker = 32, 400
	var (
		sent, admitted, shed, cancelled atomic.Int64
		violation                       atomic.Value
		wg                              sync.WaitGroup
		stop                            = make(chan struct{})
	)
	check := func() {
		if err := checkInvariants(c.state.Load(), &l); err != nil {
			violation.CompareAndSwap(nil, err)
		}
	}
	checker := make(chan struct{})
	go func() {
		defer close(checker)
		for {
			select {
			case <-stop:
				return
			default:
				check()
				runtime.Gosched()
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for range perWorker {
				lane := Lanes()[rng.IntN(3)]
				ctx, cancel := context.WithCancel(context.Background())
				if rng.IntN(8) == 0 {
					cancel() // a client that left before or while queuing
				}
				sent.Add(1)
				p, err := c.Acquire(ctx, Request{Lane: lane, Anonymous: rng.IntN(2) == 0})
				var se *ShedError
				switch {
				case err == nil:
					admitted.Add(1)
					check()
					for range rng.IntN(50) {
						runtime.Gosched()
					}
					p.Release()
					if rng.IntN(4) == 0 {
						p.Release()
					}
				case errors.As(err, &se):
					shed.Add(1)
				case errors.Is(err, context.Canceled):
					cancelled.Add(1)
				default:
					t.Errorf("unexpected error: %v", err)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-checker
	if v := violation.Load(); v != nil {
		t.Fatalf("invariant violated: %v", v)
	}
	if s := c.state.Load(); s != 0 {
		t.Fatalf("state after all requests: got %#x, want 0 (slots or queue entries leaked)", s)
	}
	if got := admitted.Load() + shed.Load() + cancelled.Load(); got != sent.Load() {
		t.Fatalf("accounted %d of %d requests", got, sent.Load())
	}
	var counted uint64
	snap := c.Snapshot()
	if snap.AnonQueued != 0 || snap.AnonInFlight != 0 {
		t.Errorf("anonymous at end: %d queued, %d in flight, want 0", snap.AnonQueued, snap.AnonInFlight)
	}
	for _, ln := range snap.Lanes {
		if ln.Queued != 0 {
			t.Errorf("%s queued at end: got %d, want 0", ln.Lane, ln.Queued)
		}
		for _, d := range []Decision{Admitted, QueueFull, QueueTimeout, WaitTooLong, Cancelled} {
			counted += ln.Decisions[d]
		}
	}
	if counted != uint64(sent.Load()) {
		t.Fatalf("decision counters: got %d, want %d", counted, sent.Load())
	}
	if admitted.Load() == 0 || shed.Load() == 0 {
		t.Fatalf("stress did not exercise both paths: admitted %d, shed %d", admitted.Load(), shed.Load())
	}
	t.Logf("sent %d: admitted %d, shed %d, cancelled %d", sent.Load(), admitted.Load(), shed.Load(), cancelled.Load())
}
