package fleet

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/lanegate/lanegate/admission"
)

// lanes is how many lanes the fleet shares; arrays are indexed by
// admission.Lane.
const lanes = 3

// The conversion fails to compile if admission grows or loses a lane.
var _ = [lanes]admission.Lane(admission.Lanes())

// maxDemand bounds each reported count, so that the script's arithmetic on
// doubles stays exact; any demand this large already wants every slot.
const maxDemand = 1 << 20

// LaneLimits are one lane's fleet-wide rules.
type LaneLimits struct {
	// Reserved slots are for this lane only, fleet-wide: no other lane is
	// granted them, even while this lane leaves them unused.
	Reserved int
	// Max is the most this lane may hold across the fleet: the login lane's
	// max is the app's cores, however many lanegates there are.
	Max int
}

// Limits are the fleet's capacity rules, which every member passes on each
// renewal. Members should agree on them; while they do not (a reload
// reaching members one by one), each renewal uses the renewing member's,
// and the fleet settles once every member has renewed with the new ones.
type Limits struct {
	// Budget is the most requests the whole fleet has in flight at once.
	Budget int
	// Lane holds each lane's rules, indexed by admission.Lane.
	Lane [lanes]LaneLimits
	// Login is the fleet's login rate: the members' buckets run at parts
	// of it that add up to it. Zero rate for none.
	Login admission.RateLimit
}

// LimitsOf returns the budget, reservations and maxima of lim, read as the
// fleet's: what one lanegate would admit alone, the fleet shares.
func LimitsOf(lim admission.Limits) Limits {
	var out Limits
	out.Budget = lim.Budget
	for _, l := range admission.Lanes() {
		out.Lane[l] = LaneLimits{Reserved: lim.Lane[l].Reserved, Max: lim.Lane[l].Max}
	}
	out.Login = lim.LoginRate
	return out
}

// Validate reports every inconsistency in l, joined: the rules
// admission.Limits.Validate has for the same numbers.
func (l Limits) Validate() error {
	var errs []error
	if l.Budget < 1 || l.Budget > admission.MaxBudget {
		errs = append(errs, fmt.Errorf("budget %d: must be between 1 and %d", l.Budget, admission.MaxBudget))
	}
	sum := 0
	for _, lane := range admission.Lanes() {
		ll := l.Lane[lane]
		if ll.Reserved < 0 {
			errs = append(errs, fmt.Errorf("%s reserved %d: must not be negative", lane, ll.Reserved))
		}
		if ll.Reserved > ll.Max {
			errs = append(errs, fmt.Errorf("%s reserved %d exceeds its max %d", lane, ll.Reserved, ll.Max))
		}
		if ll.Max > l.Budget {
			errs = append(errs, fmt.Errorf("%s max %d exceeds budget %d", lane, ll.Max, l.Budget))
		}
		sum += max(ll.Reserved, 0)
	}
	if sum > l.Budget {
		errs = append(errs, fmt.Errorf("reservations sum to %d, more than budget %d", sum, l.Budget))
	}
	if l.Login.Rate < 0 || l.Login.Enabled() && l.Login.Burst < 1 || math.IsNaN(l.Login.Rate) {
		errs = append(errs, fmt.Errorf("login rate %g/s, burst %d: the rate must not be negative, the burst at least 1", l.Login.Rate, l.Login.Burst))
	}
	return errors.Join(errs...)
}

// LaneDemand is what one member has of one lane when it renews.
type LaneDemand struct {
	// InFlight is how many of the lane's requests it has at the app now.
	InFlight int
	// Queued is how many wait for a slot.
	Queued int
}

// Demand is a member's demand per lane, indexed by admission.Lane. Its
// share of each lane follows InFlight + Queued.
type Demand [lanes]LaneDemand

// validate refuses negative counts; counts above maxDemand are clamped by
// the caller.
func (d Demand) validate() error {
	var errs []error
	for _, l := range admission.Lanes() {
		if d[l].InFlight < 0 || d[l].Queued < 0 {
			errs = append(errs, fmt.Errorf("%s demand %d in flight, %d queued: must not be negative", l, d[l].InFlight, d[l].Queued))
		}
	}
	return errors.Join(errs...)
}

// Pace is a member's login pace, per second: the logins it completes (its
// measured completion rate) and those that arrive at it. The fleet sums
// the first into the line's pace, and divides its login rate by the
// second.
type Pace struct {
	Completions, Arrivals float64
}

func (p Pace) validate() error {
	if !(p.Completions >= 0 && p.Arrivals >= 0) {
		return fmt.Errorf("login pace %g completed, %g arrived per second: must not be negative", p.Completions, p.Arrivals)
	}
	return nil
}

// LaneGrant is a member's share of one lane: its local limits for the lane.
type LaneGrant struct {
	// Max is the most requests of the lane the member may have in flight.
	Max int
	// Reserved is its part of the lane's reservation, at most Max.
	Reserved int
}

// Grant is what a member may admit until its lease expires.
type Grant struct {
	// Lane holds the member's share of each lane, indexed by
	// admission.Lane: its local lane max and reservation.
	Lane [lanes]LaneGrant
	// Budget is the sum of the lanes' Max: the member's local budget.
	Budget int
	// Members is the number of live members the fleet had at the renewal
	// (the member included); after a failed renewal, the last known.
	Members int
	// Expires is when the grant ends, on the member's clock. It is no
	// later than when the fleet deems the lease expired and hands its
	// capacity to others: after it, the member must not rely on the grant.
	Expires time.Time
	// Learning reports that the fleet is relearning what its members
	// hold (see the package doc): no grant grows until it ends.
	Learning bool
	// Login is the member's part of the fleet's login rate; zero when the
	// fleet has none.
	Login admission.RateLimit
	// LoginRate is the fleet's login completion rate per second: the sum
	// of its members' paces.
	LoginRate float64
	// LoginBefore is the first arrival of the oldest login waiting at
	// another member: until its next renewal, the member admits none of
	// its own logins that arrived later, so none overtakes it. Zero when
	// no other member has a login waiting.
	LoginBefore time.Time
}

// Valid reports whether the grant may still be used at now.
func (g Grant) Valid(now time.Time) bool { return now.Before(g.Expires) }
