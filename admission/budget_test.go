package admission

import (
	"context"
	"testing"
	"time"
)

// benchLimits are the storm benchmark's: a pool of 8, two cores.
func stormLimits() Limits {
	var l Limits
	l.Budget = 8
	l.Lane[Login] = LaneLimits{Reserved: 1, Max: 2, Queue: 64, QueueTimeout: 30 * time.Second}
	l.Lane[Core] = LaneLimits{Reserved: 4, Max: 8, Queue: 64, QueueTimeout: 5 * time.Second}
	l.Lane[Export] = LaneLimits{Reserved: 0, Max: 2, Queue: 4, QueueTimeout: 30 * time.Second}
	l.AnonMax = 4
	return l
}

func TestConstrainSplitsBySameRules(t *testing.T) {
	type lane struct{ reserved, max int }
	for _, tc := range []struct {
		n    int
		want [3]lane // login, core, export
		anon int
	}{
		{n: 8, want: [3]lane{{1, 2}, {4, 8}, {0, 2}}, anon: 4},
		{n: 20, want: [3]lane{{1, 2}, {4, 8}, {0, 2}}, anon: 4},
		{n: -1, want: [3]lane{{1, 2}, {4, 8}, {0, 2}}, anon: 4},
		// 4*6/8 = 3 for core; login's 6/8 floors to 0 and gets its one back.
		{n: 6, want: [3]lane{{1, 2}, {3, 6}, {0, 2}}, anon: 3},
		{n: 2, want: [3]lane{{1, 2}, {1, 2}, {0, 2}}, anon: 1},
		// One slot for two reserving lanes: nobody owns it.
		{n: 1, want: [3]lane{{0, 1}, {0, 1}, {0, 1}}, anon: 1},
		{n: 0, want: [3]lane{{0, 0}, {0, 0}, {0, 0}}, anon: 1},
	} {
		got := constrain(stormLimits(), tc.n)
		wantBudget := min(max(tc.n, 0), 8)
		if tc.n < 0 {
			wantBudget = 8
		}
		if got.Budget != wantBudget {
			t.Errorf("n=%d: budget %d, want %d", tc.n, got.Budget, wantBudget)
		}
		sum := 0
		for i, l := range [...]Lane{Login, Core, Export} {
			g := lane{got.Lane[l].Reserved, got.Lane[l].Max}
			if g != tc.want[i] {
				t.Errorf("n=%d: %s reserved/max %v, want %v", tc.n, l, g, tc.want[i])
			}
			if got.Lane[l].Queue != stormLimits().Lane[l].Queue {
				t.Errorf("n=%d: %s queue changed to %d", tc.n, l, got.Lane[l].Queue)
			}
			sum += g.reserved
		}
		if sum > got.Budget {
			t.Errorf("n=%d: reservations %d exceed the budget %d", tc.n, sum, got.Budget)
		}
		if got.AnonMax != tc.anon {
			t.Errorf("n=%d: anon max %d, want %d", tc.n, got.AnonMax, tc.anon)
		}
		if tc.n > 0 {
			if err := got.Validate(); err != nil {
				t.Errorf("n=%d: %v", tc.n, err)
			}
		}
	}
}

// While others hold most of the pool, a login still gets in past a page
// flood, and the pages are not shut out either.
func TestConstrainedLoginGetsIn(t *testing.T) {
	c, clock := newTest(t, stormLimits())
	c.Constrain(2)
	if got := c.Snapshot(); got.Budget != 2 || got.StaticBudget != 8 {
		t.Fatalf("budget %d of %d, want 2 of 8", got.Budget, got.StaticBudget)
	}
	page := mustAcquire(t, c, Core)
	// Core's second page would take login's reserved slot: it waits.
	pageCh := enqueue(t, context.Background(), c, clock, Core, 0)
	login := mustAcquire(t, c, Login)
	checkInFlight(t, c, map[Lane]int{Core: 1, Login: 1})
	login.Release()
	// The freed login slot stays login's: the waiting page may not take
	// it. Release hands slots over before it returns.
	checkInFlight(t, c, map[Lane]int{Core: 1, Login: 0})
	page.Release()
	r := recv(t, pageCh)
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.p.Release()
}

func TestConstrainShrinksWithoutDroppingAndGrowsAtOnce(t *testing.T) {
	c, clock := newTest(t, stormLimits())
	var pages []*Permit
	for range 6 {
		pages = append(pages, mustAcquire(t, c, Core))
	}
	c.Constrain(0)
	checkInFlight(t, c, map[Lane]int{Core: 6})
	if got := c.InFlight(); got != 6 {
		t.Fatalf("InFlight %d, want 6", got)
	}
	// Nothing is admitted at zero, not even into a drained slot.
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	pages[0].Release()
	checkInFlight(t, c, map[Lane]int{Core: 5})
	// Lifting the constraint admits the waiter without any release.
	c.Constrain(-1)
	r := recv(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := c.Limits().Budget; got != 8 {
		t.Fatalf("budget after lifting: %d, want 8", got)
	}
	for _, p := range append(pages[1:], r.p) {
		p.Release()
	}
	checkInFlight(t, c, map[Lane]int{Core: 0})
}

// A queued request whose wait runs out under a budget of zero is shed
// with a Retry-After, as any other: admitting nothing never means hanging.
func TestConstrainedToZeroSheds(t *testing.T) {
	c, clock := newTest(t, stormLimits())
	c.Constrain(0)
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	clock.Advance(6 * time.Second)
	r := recv(t, ch)
	shed, ok := r.err.(*ShedError)
	if !ok {
		t.Fatalf("got %v, want a shed", r.err)
	}
	if shed.RetryAfter <= 0 {
		t.Fatalf("shed without Retry-After: %+v", shed)
	}
}

// Reconfigure keeps the effective budget: a reload does not undo what the
// pool says.
func TestReconfigureKeepsConstraint(t *testing.T) {
	c, _ := newTest(t, stormLimits())
	c.Constrain(3)
	l := stormLimits()
	l.Budget = 10
	l.Lane[Core].Max = 10
	if err := c.Reconfigure(l); err != nil {
		t.Fatal(err)
	}
	if got := c.Snapshot(); got.Budget != 3 || got.StaticBudget != 10 {
		t.Fatalf("budget %d of %d after reload, want 3 of 10", got.Budget, got.StaticBudget)
	}
}

// A lane configured with no slots is closed and refuses at once; one that
// Constrain narrowed to none waits for its slots to come back.
func TestClosedLaneRefusesAtOnce(t *testing.T) {
	l := stormLimits()
	l.Lane[Export] = LaneLimits{Max: 0, Queue: 4, QueueTimeout: 30 * time.Second}
	c, clock := newTest(t, l)
	_, err := c.Acquire(context.Background(), Request{Lane: Export})
	if shed, ok := err.(*ShedError); !ok || shed.Err != ErrQueueFull {
		t.Fatalf("export on a closed lane: got %v, want refused at once as queue full", err)
	}
	c.Constrain(0)
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	c.Constrain(-1)
	if r := recv(t, ch); r.err != nil {
		t.Fatalf("core narrowed to no slots, then given them back: %v", r.err)
	} else {
		r.p.Release()
	}
}

// A fleet share narrows each lane to its part; Constrain applies on top,
// and lifting the share gives the configured limits back with waiters
// admitted at once.
func TestShareNarrowsLanes(t *testing.T) {
	c, clock := newTest(t, stormLimits())
	c.SetShare(&Share{Lane: [numLanes]LaneShare{
		Login: {Max: 1, Reserved: 1},
		Core:  {Max: 2, Reserved: 1},
		// Export: nothing; a share above the configured max is cut.
	}})
	lim := c.Limits()
	if lim.Budget != 3 || lim.Lane[Login].Max != 1 || lim.Lane[Core].Max != 2 || lim.Lane[Core].Reserved != 1 || lim.Lane[Export].Max != 0 {
		t.Fatalf("limits under the share: %+v", lim)
	}
	if err := lim.Validate(); err != nil {
		t.Fatalf("limits under the share do not validate: %v", err)
	}
	p1, p2 := mustAcquire(t, c, Core), mustAcquire(t, c, Core)
	ch := enqueue(t, context.Background(), c, clock, Core, 0)
	login := mustAcquire(t, c, Login) // its reserved slot
	c.Constrain(2)
	if got := c.Limits().Budget; got != 2 {
		t.Fatalf("share of 3 constrained to 2: budget %d", got)
	}
	c.Constrain(-1)
	c.SetShare(nil)
	if r := recv(t, ch); r.err != nil {
		t.Fatalf("queued core after the share was lifted: %v", r.err)
	} else {
		r.p.Release()
	}
	if got := c.Limits().Budget; got != 8 {
		t.Fatalf("budget after lifting the share: %d, want 8", got)
	}
	for _, p := range []*Permit{p1, p2, login} {
		p.Release()
	}
}

func TestShareBudgetCapsTheLanes(t *testing.T) {
	c, _ := newTest(t, stormLimits())
	c.SetShare(&Share{Budget: 2, Lane: [numLanes]LaneShare{Login: {Max: 1}, Core: {Max: 2}, Export: {Max: 1}}})
	if lim := c.Limits(); lim.Budget != 2 || lim.Lane[Core].Max != 2 {
		t.Fatalf("share capped at 2: %+v", lim)
	}
}

// Freeze holds each lane to what it has in flight and reports it: a slot
// freed meanwhile may be refilled, but no lane grows past its count until
// the next share.
func TestFreezeHoldsInFlight(t *testing.T) {
	c, clock := newTest(t, stormLimits())
	p1 := mustAcquire(t, c, Core)
	mustAcquire(t, c, Login).Release()
	login := mustAcquire(t, c, Login)
	in, q := c.Freeze()
	if in[Core] != 1 || in[Login] != 1 || in[Export] != 0 || q != [numLanes]int{} {
		t.Fatalf("frozen at in flight %v, queued %v", in, q)
	}
	first := enqueue(t, context.Background(), c, clock, Core, 0)
	second := enqueue(t, context.Background(), c, clock, Core, 1)
	p1.Release() // refilled by the first waiter: the lane stays at 1
	r1 := recv(t, first)
	if r1.err != nil {
		t.Fatal(r1.err)
	}
	checkInFlight(t, c, map[Lane]int{Core: 1, Login: 1})
	if _, q := c.Freeze(); q[Core] != 1 {
		t.Fatalf("queued core while frozen: %d, want 1", q[Core])
	}
	c.SetShare(&Share{Lane: [numLanes]LaneShare{Core: {Max: 2, Reserved: 1}, Login: {Max: 1, Reserved: 1}}})
	r2 := recv(t, second)
	if r2.err != nil {
		t.Fatal(r2.err)
	}
	for _, p := range []*Permit{r1.p, r2.p, login} {
		p.Release()
	}
}
