package config

import (
	"fmt"
	"slices"
)

// Names of the fleet's variables.
const (
	varFleet      = prefix + "FLEET"
	varFleetName  = prefix + "FLEET_NAME"
	varInstanceID = prefix + "INSTANCE_ID"
	varFleetLease = prefix + "FLEET_LEASE"
	varFleetRenew = prefix + "FLEET_RENEW"
)

// maxInstanceID bounds LANEGATE_INSTANCE_ID: it is stored with every
// renewal.
const maxInstanceID = 200

// fleet checks the fleet's variables.
func (v *validator) fleet() {
	f := v.c.Fleet
	if !v.skip(varFleet) && !slices.Contains([]string{FleetOff, FleetRedis}, f.Mode) {
		v.failQuoted(varFleet, f.Mode, "want off or redis")
		return
	}
	if !v.skip(varFleetName) && !validFleetName(f.Name) {
		v.failQuoted(varFleetName, f.Name, "want 1 to 64 letters, digits, '.', '_' or '-'")
	}
	if !v.skip(varInstanceID) && len(f.InstanceID) > maxInstanceID {
		v.fail(varInstanceID, "must be at most %d bytes", maxInstanceID)
	}
	v.positive(varFleetLease, f.Lease)
	v.positive(varFleetRenew, f.Renew)
	if f.Renew > 0 && f.Lease > 0 && !v.skip(varFleetLease) && !v.skip(varFleetRenew) && 3*f.Renew > f.Lease {
		v.relate([]string{varFleetRenew, varFleetLease},
			"%s=%s is more than a third of %s=%s: a replica whose renewal fails once or twice would lose its share",
			varFleetRenew, f.Renew, varFleetLease, f.Lease)
	}
	if f.Mode != FleetRedis {
		return
	}
	if !v.skip(varRedisURL) && v.c.Session.RedisURL == "" {
		v.report(varRedisURL, fmt.Sprintf("%s is required because %s=redis", varRedisURL, varFleet))
	}
	// A ticket issued by one replica must rank the same on the others.
	a, s := v.c.Admission, v.c.Session
	if a.WaitingRoom && a.TicketSecret == "" && s.IdentitySecret == "" {
		v.report(varTicketSecret, fmt.Sprintf("%s (or %s) is required because %s=redis: every replica must verify the tickets the others issue",
			varTicketSecret, varIdentitySecret, varFleet))
	}
}

func validFleetName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
