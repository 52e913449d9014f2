package admin

import (
	"time"

	"github.com/lanegate/lanegate/poolwatch"
)

// Pool is what /status and /readyz read from the pool watcher.
type Pool interface {
	Status() poolwatch.Status
}

// PoolStatus is the pool watcher in the /status document: PgBouncer's
// figures for the app's pool at the last reading, their age, what the
// watcher takes the pool's other clients to hold, and the budget it sets.
// It never shows the console's address or password.
type PoolStatus struct {
	// State is starting, ok or degraded (the static budget is in force
	// for want of a fresh reading).
	State  string `json:"state"`
	Follow bool   `json:"follow"`

	Database string `json:"database,omitempty"`
	User     string `json:"user,omitempty"`
	Consoles int    `json:"consoles"`

	Size        int    `json:"pool_size"`
	ReservePool int    `json:"reserve_pool"`
	ClActive    int    `json:"cl_active"`
	ClWaiting   int    `json:"cl_waiting"`
	SvActive    int    `json:"sv_active"`
	SvIdle      int    `json:"sv_idle"`
	SvUsed      int    `json:"sv_used"`
	MaxWait     string `json:"maxwait"`
	PoolMode    string `json:"pool_mode,omitempty"`
	// QueryWaitTimeout is PgBouncer's query_wait_timeout.
	QueryWaitTimeout string `json:"query_wait_timeout,omitempty"`

	// At is when the last good reading was taken and Age how old it is.
	At  *time.Time `json:"at,omitempty"`
	Age string     `json:"age,omitempty"`

	// InFlight is lanegate's requests in flight at the reading; Others
	// what the pool's other clients hold or wait for, as estimated.
	InFlight int `json:"in_flight"`
	Others   int `json:"others"`

	EffectiveBudget int `json:"effective_budget"`
	StaticBudget    int `json:"static_budget"`

	Reads       uint64     `json:"reads"`
	Failures    uint64     `json:"failures"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

// poolStatus renders the watcher's state for /status.
func poolStatus(st poolwatch.Status) *PoolStatus {
	p := st.Reading.Pool
	ps := &PoolStatus{
		State:           st.State,
		Follow:          st.Follow,
		Database:        p.Database,
		User:            p.User,
		Consoles:        st.Reading.Consoles,
		Size:            p.Size,
		ReservePool:     p.ReservePool,
		ClActive:        p.ClActive,
		ClWaiting:       p.ClWaiting,
		SvActive:        p.SvActive,
		SvIdle:          p.SvIdle,
		SvUsed:          p.SvUsed,
		MaxWait:         p.MaxWait.String(),
		PoolMode:        p.Mode,
		InFlight:        st.InFlight,
		Others:          st.Others,
		EffectiveBudget: st.Effective,
		StaticBudget:    st.Static,
		Reads:           st.Reads,
		Failures:        st.Failures,
		LastError:       st.LastError,
	}
	if !st.At.IsZero() {
		ps.At = &st.At
		ps.Age = st.Age.Round(time.Millisecond).String()
		ps.QueryWaitTimeout = st.Reading.Settings.QueryWaitTimeout.String()
	}
	if !st.LastErrorAt.IsZero() {
		ps.LastErrorAt = &st.LastErrorAt
	}
	return ps
}
