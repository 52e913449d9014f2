package fleet

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// renewPace renews member under lim with demand d and pace p, fails the
// test on an error, and checks the invariant.
func (f *fixture) renewPace(member string, lim Limits, d Demand, p Pace) Grant {
	f.t.Helper()
	g, err := f.leases.Renew(context.Background(), member, lim, d, p)
	if err != nil {
		f.t.Fatalf("Renew %s: %v", member, err)
	}
	if err := invariant(f.state(), lim); err != nil {
		f.t.Fatal(err)
	}
	return g
}

// loginDemand is a Demand of logins only.
func loginDemand(inFlight, waiting int) Demand {
	var d Demand
	d[login] = LaneDemand{InFlight: inFlight, Queued: waiting}
	return d
}

// TestLoginOrderAcrossMembers checks that the login lane's slots go to
// the members where the fleet's oldest waiting logins wait, whatever each
// member's own demand: the member whose logins arrived first gets both
// slots though another has more waiting; once its logins are admitted and
// done, the slots move to the next oldest, and split when the next two
// oldest wait at different members.
func TestLoginOrderAcrossMembers(t *testing.T) {
	f := newFixture(t)
	members := []string{"a", "b", "c"}
	f.warm(members...)
	lines := map[string]*Line{}
	for _, m := range members {
		lines[m] = startLine(t, f.client, "test", m, LineOptions{})
	}
	// Two logins at c first, then three at a, then one at b.
	var ranks []admission.Rank
	for i, m := range []string{"c", "c", "a", "a", "a", "b"} {
		r := arrive(t, lines[m], 0, time.Time{})
		if r.Ahead != i {
			t.Fatalf("login %d at %s: got %d ahead, want %d", i, m, r.Ahead, i)
		}
		ranks = append(ranks, r)
	}
	// settle renews each member in turn until the grants stop changing,
	// and returns the login grants.
	settle := func(what string, d map[string]Demand) map[string]int {
		t.Helper()
		got := map[string]int{}
		for round := range 4 {
			changed := false
			for _, m := range members {
				g := f.renew(m, d[m]).Lane[login].Max
				if got[m] != g {
					changed = true
				}
				got[m] = g
			}
			if !changed && round > 0 {
				return got
			}
		}
		t.Fatalf("%s: the login grants did not settle: %v", what, got)
		return nil
	}
	want := func(what string, got map[string]int, a, b, c int) {
		t.Helper()
		if got["a"] != a || got["b"] != b || got["c"] != c {
			t.Errorf("%s: got login grants %v; want a %d, b %d, c %d", what, got, a, b, c)
		}
	}

	// By demand alone a, with three of six waiting, would get a slot.
	got := settle("c's logins oldest", map[string]Demand{
		"a": loginDemand(0, 3), "b": loginDemand(0, 1), "c": loginDemand(0, 2),
	})
	want("c's logins oldest", got, 0, 0, 2)

	// c admits both: they leave the line and run.
	lines["c"].Used(ranks[0])
	lines["c"].Used(ranks[1])
	reported(t, lines["c"], 2)
	got = settle("c's logins running", map[string]Demand{
		"a": loginDemand(0, 3), "b": loginDemand(0, 1), "c": loginDemand(2, 0),
	})
	want("c's logins running", got, 0, 0, 2)

	// They are done: the two oldest waiting are a's.
	got = settle("c's logins done", map[string]Demand{
		"a": loginDemand(0, 3), "b": loginDemand(0, 1), "c": {},
	})
	want("c's logins done", got, 2, 0, 0)

	// a admits two; once they are done, the oldest two are a's third and
	// b's.
	lines["a"].Used(ranks[2])
	lines["a"].Used(ranks[3])
	reported(t, lines["a"], 2)
	got = settle("a's logins running", map[string]Demand{
		"a": loginDemand(2, 1), "b": loginDemand(0, 1), "c": {},
	})
	want("a's logins running", got, 2, 0, 0)
	got = settle("a's logins done", map[string]Demand{
		"a": loginDemand(0, 1), "b": loginDemand(0, 1), "c": {},
	})
	want("a's logins done", got, 1, 1, 0)
}

// TestLoginRateShares checks how the fleet's login rate is divided: evenly
// while no logins arrive, by where they arrive otherwise with a tenth
// spread evenly; the parts add up to the fleet's rate, and every member's
// burst is at least one. A fleet without a login rate grants none.
func TestLoginRateShares(t *testing.T) {
	f := newFixture(t)
	members := []string{"a", "b", "c"}
	lim := readmeLimits()
	for _, m := range members {
		if g := f.renewPace(m, lim, Demand{}, Pace{Arrivals: 5}); g.Login != (admission.RateLimit{}) {
			t.Fatalf("%s without a login rate: got %+v, want none", m, g.Login)
		}
	}
	lim.Login = admission.RateLimit{Rate: 10, Burst: 10}
	near := func(got, want float64) bool { return math.Abs(got-want) < 0.01 }
	shares := func(what string, arrivals map[string]float64, want map[string]float64) {
		t.Helper()
		// Once to store every member's arrivals, then the shares.
		for _, m := range members {
			f.renewPace(m, lim, Demand{}, Pace{Arrivals: arrivals[m]})
		}
		sum := 0.0
		for _, m := range members {
			g := f.renewPace(m, lim, Demand{}, Pace{Arrivals: arrivals[m]})
			if !near(g.Login.Rate, want[m]) || g.Login.Burst < 1 || g.Login.Burst > lim.Login.Burst {
				t.Errorf("%s, %s: got rate %g, burst %d; want rate %.3f, burst 1 to %d",
					what, m, g.Login.Rate, g.Login.Burst, want[m], lim.Login.Burst)
			}
			sum += g.Login.Rate
		}
		if !near(sum, lim.Login.Rate) {
			t.Errorf("%s: the shares sum to %g, want %g", what, sum, lim.Login.Rate)
		}
	}
	third := 10.0 / 3
	shares("no arrivals", map[string]float64{}, map[string]float64{"a": third, "b": third, "c": third})
	shares("all at a", map[string]float64{"a": 9}, map[string]float64{"a": 10 * (0.9 + 0.1/3), "b": 1.0 / 3, "c": 1.0 / 3})
	shares("two to one", map[string]float64{"a": 2, "b": 1},
		map[string]float64{"a": 10 * (0.9*2/3 + 0.1/3), "b": 10 * (0.9/3 + 0.1/3), "c": 1.0 / 3})

	// A member's burst follows its rate: a with nearly all the rate has
	// nearly all the burst.
	lim.Login.Burst = 100
	f.renewPace("b", lim, Demand{}, Pace{})
	f.renewPace("c", lim, Demand{}, Pace{})
	g := f.renewPace("a", lim, Demand{}, Pace{Arrivals: 9})
	if g.Login.Burst < 90 || g.Login.Burst > 94 {
		t.Errorf("a with 9 of 9 arrivals, burst 100: got burst %d, want about 93", g.Login.Burst)
	}
	// Alone, a member has the whole rate.
	f.clock.Advance(testLease)
	if g := f.renewPace("a", lim, Demand{}, Pace{}); g.Login.Rate != 10 || g.Login.Burst != 100 {
		t.Errorf("alone: got %+v, want the fleet's 10/s, burst 100", g.Login)
	}
}

// TestLoginRateIsFleetPace checks that each grant's LoginRate is the sum of
// the completion rates the live members reported, each at its last
// renewal.
func TestLoginRateIsFleetPace(t *testing.T) {
	f := newFixture(t)
	lim := readmeLimits()
	pace := map[string]float64{"a": 1.5, "b": 2.25, "c": 0.125}
	want := 0.0
	for _, m := range []string{"a", "b", "c"} {
		want += pace[m]
		if g := f.renewPace(m, lim, Demand{}, Pace{Completions: pace[m]}); g.LoginRate != want {
			t.Errorf("%s joins: got the fleet's login rate %g, want %g", m, g.LoginRate, want)
		}
	}
	// c's pace changes: the others see it at their next renewals.
	f.renewPace("c", lim, Demand{}, Pace{Completions: 4})
	if g := f.renewPace("a", lim, Demand{}, Pace{Completions: 1.5}); g.LoginRate != 7.75 {
		t.Errorf("after c's change: got %g, want 7.75", g.LoginRate)
	}
	// b and c stop renewing: once their leases end they no longer count.
	f.clock.Advance(testLease)
	if g := f.renewPace("a", lim, Demand{}, Pace{Completions: 0.5}); g.LoginRate != 0.5 {
		t.Errorf("a alone: got %g, want its own 0.5", g.LoginRate)
	}
}

// TestLoginOrderSkipsDeadMembers checks that logins still listed as
// waiting at a member whose lease has ended (it died with logins waiting,
// and they have not lapsed yet) do not take the places of the oldest
// logins waiting at live members: the login lane's slots still go to the
// member where the oldest live waiting logins wait.
func TestLoginOrderSkipsDeadMembers(t *testing.T) {
	f := newFixture(t)
	f.warm("a", "b", "c", "d") // d's lease ends with the warm-up; it never renews again
	lines := map[string]*Line{}
	for _, m := range []string{"a", "c", "d"} {
		lines[m] = newTestLine(t, f.client, "test", m, LineOptions{})
	}
	// Two logins at d, which is dead; then two at c, then three at a.
	for i, m := range []string{"d", "d", "c", "c", "a", "a", "a"} {
		if r := arrive(t, lines[m], 0, time.Time{}); r.Ahead != i {
			t.Fatalf("login %d at %s: got %d ahead, want %d", i, m, r.Ahead, i)
		}
	}
	d := map[string]Demand{"a": loginDemand(0, 3), "b": {}, "c": loginDemand(0, 2)}
	got := map[string]int{}
	for round := range 3 {
		for _, m := range []string{"a", "b", "c"} {
			g := f.renew(m, d[m])
			if round > 0 && g.Members != 3 {
				t.Fatalf("%s: got %d members, want 3 (d's lease has ended)", m, g.Members)
			}
			got[m] = g.Lane[login].Max
		}
	}
	if got["a"] != 0 || got["b"] != 0 || got["c"] != 2 {
		t.Errorf("got login grants %v; want c, where the oldest live logins wait, 2, a and b 0", got)
	}
}
