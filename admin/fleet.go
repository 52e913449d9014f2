package admin

import (
	"context"
	"time"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/fleet"
)

// Fleet is what /status and /readyz read of fleet mode: this replica's
// coordinator, and the fleet's members as Redis has them.
type Fleet interface {
	Status() fleet.Status
	Members(ctx context.Context) ([]fleet.Member, error)
}

// FleetLane is one lane's share in the /status document.
type FleetLane struct {
	Max      int `json:"max"`
	Reserved int `json:"reserved"`
	InFlight int `json:"in_flight"`
	Queued   int `json:"queued"`
}

// FleetMember is one member of the fleet in the /status document.
type FleetMember struct {
	ID        string               `json:"id"`
	Lanes     map[string]FleetLane `json:"lanes"`
	Age       string               `json:"lease_age"`
	Remaining string               `json:"lease_remaining"`
}

// FleetStatus is fleet mode in the /status document. It never shows the
// Redis address.
type FleetStatus struct {
	// State is joining, ok or degraded (the fallback share is in force
	// for want of Redis).
	State  string `json:"state"`
	Member string `json:"member"`
	// Members is how many live members the fleet has, as last known.
	Members int `json:"members"`
	// Share is this replica's grant per lane, and Budget their sum.
	Share  map[string]FleetLane `json:"share"`
	Budget int                  `json:"budget"`
	// LeaseExpires is when this replica's lease runs out unless renewed.
	LeaseExpires *time.Time `json:"lease_expires,omitempty"`
	Renewals     uint64     `json:"renewals"`
	Failures     uint64     `json:"failures"`
	LastError    string     `json:"last_error,omitempty"`
	LastErrorAt  *time.Time `json:"last_error_at,omitempty"`
	// Fleet lists every live member; absent when Redis did not answer.
	Fleet []FleetMember `json:"fleet,omitempty"`
}

// fleetTimeout bounds the read of the fleet's members for /status.
const fleetTimeout = 250 * time.Millisecond

func fleetStatus(ctx context.Context, f Fleet) *FleetStatus {
	st := f.Status()
	fs := &FleetStatus{
		State: st.State, Member: st.Member, Members: st.Members,
		Share: map[string]FleetLane{}, Budget: st.Grant.Budget,
		Renewals: st.Renewals, Failures: st.Failures, LastError: st.LastError,
	}
	for _, l := range admission.Lanes() {
		fs.Share[l.String()] = FleetLane{
			Max: st.Grant.Lane[l].Max, Reserved: st.Grant.Lane[l].Reserved,
			InFlight: st.Demand[l].InFlight, Queued: st.Demand[l].Queued,
		}
	}
	if !st.Grant.Expires.IsZero() {
		fs.LeaseExpires = &st.Grant.Expires
	}
	if !st.LastErrorAt.IsZero() {
		fs.LastErrorAt = &st.LastErrorAt
	}
	ctx, cancel := context.WithTimeout(ctx, fleetTimeout)
	defer cancel()
	if members, err := f.Members(ctx); err == nil {
		for _, m := range members {
			fm := FleetMember{ID: m.ID, Lanes: map[string]FleetLane{},
				Age: m.Age.String(), Remaining: m.Remaining.String()}
			for _, l := range admission.Lanes() {
				fm.Lanes[l.String()] = FleetLane{Max: m.Lane[l].Max, Reserved: m.Lane[l].Reserved,
					InFlight: m.Demand[l].InFlight, Queued: m.Demand[l].Queued}
			}
			fs.Fleet = append(fs.Fleet, fm)
		}
	}
	return fs
}
