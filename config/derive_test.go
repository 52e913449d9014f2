package config

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
)

func TestDerivedLimits(t *testing.T) {
	// Worked by hand from the rules in Limits' doc comment, with the
	// default 20% headroom: pool 1 -> budget 1, 2 -> 1, 5 -> 4, 20 -> 16,
	// 140 -> 112.
	tests := []struct {
		pool, cpus              int
		budget                  int
		loginMax, loginReserved int
		exportMax, exportQueue  int
		coreReserved            int
	}{
		{pool: 1, cpus: 1, budget: 1, loginMax: 1, loginReserved: 0, exportMax: 1, exportQueue: 1, coreReserved: 0},
		{pool: 1, cpus: 2, budget: 1, loginMax: 1, loginReserved: 0, exportMax: 1, exportQueue: 1, coreReserved: 0},
		{pool: 1, cpus: 16, budget: 1, loginMax: 1, loginReserved: 0, exportMax: 1, exportQueue: 1, coreReserved: 0},
		{pool: 2, cpus: 1, budget: 1, loginMax: 1, loginReserved: 0, exportMax: 1, exportQueue: 1, coreReserved: 0},
		{pool: 2, cpus: 2, budget: 1, loginMax: 1, loginReserved: 0, exportMax: 1, exportQueue: 1, coreReserved: 0},
		{pool: 2, cpus: 16, budget: 1, loginMax: 1, loginReserved: 0, exportMax: 1, exportQueue: 1, coreReserved: 0},
		{pool: 5, cpus: 1, budget: 4, loginMax: 1, loginReserved: 1, exportMax: 1, exportQueue: 2, coreReserved: 2},
		{pool: 5, cpus: 2, budget: 4, loginMax: 2, loginReserved: 1, exportMax: 1, exportQueue: 2, coreReserved: 2},
		{pool: 5, cpus: 16, budget: 4, loginMax: 2, loginReserved: 1, exportMax: 1, exportQueue: 2, coreReserved: 2},
		{pool: 20, cpus: 1, budget: 16, loginMax: 1, loginReserved: 1, exportMax: 4, exportQueue: 8, coreReserved: 8},
		{pool: 20, cpus: 2, budget: 16, loginMax: 2, loginReserved: 2, exportMax: 4, exportQueue: 8, coreReserved: 8},
		{pool: 20, cpus: 16, budget: 16, loginMax: 8, loginReserved: 2, exportMax: 4, exportQueue: 8, coreReserved: 8},
		{pool: 140, cpus: 1, budget: 112, loginMax: 1, loginReserved: 1, exportMax: 28, exportQueue: 56, coreReserved: 56},
		{pool: 140, cpus: 2, budget: 112, loginMax: 2, loginReserved: 2, exportMax: 28, exportQueue: 56, coreReserved: 56},
		{pool: 140, cpus: 16, budget: 112, loginMax: 16, loginReserved: 14, exportMax: 28, exportQueue: 56, coreReserved: 56},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("pool=%d/cpus=%d", tt.pool, tt.cpus), func(t *testing.T) {
			cfg, err := Load(LoadOptions{Environ: []string{
				"LANEGATE_DB_POOL_SIZE=" + strconv.Itoa(tt.pool),
				"LANEGATE_UPSTREAM_CPUS=" + strconv.Itoa(tt.cpus),
			}})
			if err != nil {
				t.Fatalf("Load: got error %v, want none", err)
			}
			got := cfg.Limits()
			want := admission.Limits{
				Budget:         tt.budget,
				LoginRate:      admission.RateLimit{Rate: 10, Burst: 20},
				LoginPerClient: admission.RateLimit{Rate: 0, Burst: 5},
				MaxClients:     10000,
			}
			want.Lane[admission.Login] = admission.LaneLimits{
				Reserved: tt.loginReserved, Max: tt.loginMax, Queue: 8 * tt.budget, QueueTimeout: 30 * time.Second,
			}
			want.Lane[admission.Core] = admission.LaneLimits{
				Reserved: tt.coreReserved, Max: tt.budget, Queue: 8 * tt.budget, QueueTimeout: 5 * time.Second,
			}
			want.Lane[admission.Export] = admission.LaneLimits{
				Reserved: 0, Max: tt.exportMax, Queue: tt.exportQueue, QueueTimeout: 30 * time.Second,
			}
			if got != want {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: got %v, want nil", err)
			}
		})
	}
}

// TestDerivedLimitsAlwaysValid sweeps pool sizes, headrooms and CPU counts:
// whatever the inputs, derived values must pass validation on their own.
func TestDerivedLimitsAlwaysValid(t *testing.T) {
	base, err := Load(LoadOptions{})
	if err != nil {
		t.Fatalf("Load: got error %v, want none", err)
	}
	for _, headroom := range []int{0, 1, 20, 50, 99} {
		for _, cpus := range []int{1, 2, 3, 8, 64} {
			t.Run(fmt.Sprintf("headroom=%d/cpus=%d", headroom, cpus), func(t *testing.T) {
				t.Parallel()
				for pool := 1; pool <= 300; pool++ {
					cfg := base
					cfg.Admission.DBPoolSize = pool
					cfg.Admission.PoolHeadroom = headroom
					cfg.Admission.UpstreamCPUs = &cpus
					if errs, _ := cfg.validate(nil); len(errs) > 0 {
						t.Fatalf("pool %d: validate: got %v, want no problems", pool, errs)
					}
					if err := cfg.Limits().Validate(); err != nil {
						t.Fatalf("pool %d: Validate: got %v, want nil", pool, err)
					}
				}
			})
		}
	}
}

// TestDerivedReservationsClamp checks that a user-set max below the
// derived reservation lowers the reservation instead of failing, while
// the user's own values are kept as they are.
func TestDerivedReservationsClamp(t *testing.T) {
	tests := []struct {
		name                        string
		env                         []string
		loginReserved, coreReserved int
		loginMax, coreMax           int
	}{
		{"login max 1", []string{"LANEGATE_LOGIN_MAX=1"}, 1, 8, 1, 16},
		{"core max 3", []string{"LANEGATE_CORE_MAX=3"}, 2, 3, 8, 3},
		{"core max 1", []string{"LANEGATE_CORE_MAX=1"}, 2, 1, 8, 1},
		{"login reserved set", []string{"LANEGATE_LOGIN_RESERVED=6"}, 6, 8, 8, 16},
		{"export reserved leaves core less", []string{"LANEGATE_EXPORT_RESERVED=4", "LANEGATE_LOGIN_RESERVED=8"}, 8, 4, 8, 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(LoadOptions{Environ: append(tt.env, "LANEGATE_UPSTREAM_CPUS=16")})
			if err != nil {
				t.Fatalf("Load: got error %v, want none", err)
			}
			l := cfg.Limits()
			got := [4]int{l.Lane[admission.Login].Reserved, l.Lane[admission.Core].Reserved, l.Lane[admission.Login].Max, l.Lane[admission.Core].Max}
			want := [4]int{tt.loginReserved, tt.coreReserved, tt.loginMax, tt.coreMax}
			if got != want {
				t.Errorf("login reserved, core reserved, login max, core max: got %v, want %v", got, want)
			}
			if err := l.Validate(); err != nil {
				t.Errorf("Validate: got %v, want nil", err)
			}
		})
	}
}

func TestLimitsOfZeroConfig(t *testing.T) {
	// A hand-built Config must not panic; everything unset is derived.
	l := Config{}.Limits()
	if l.Budget != 1 {
		t.Errorf("budget: got %d, want 1", l.Budget)
	}
}
