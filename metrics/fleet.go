package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/fleet"
)

// FleetSource is what the fleet metrics read from the coordinator.
type FleetSource interface {
	Status() fleet.Status
	// LineStats are the shared login line's counters.
	LineStats() fleet.LineStats
}

var (
	descFleetShare = prometheus.NewDesc("lanegate_fleet_share",
		"This replica's share of the fleet's slots, per lane: the most it may hold until its lease is renewed.", []string{"lane"}, nil)
	descFleetMembers = prometheus.NewDesc("lanegate_fleet_members",
		"Live members of the fleet at this replica's last renewal (the last known, while Redis is out of reach).", nil, nil)
	descFleetUp = prometheus.NewDesc("lanegate_fleet_up",
		"1 while this replica's lease is renewed in Redis; 0 while it is joining or works on the fallback share (the fleet's limits ÷ the last known members).", nil, nil)
	descFleetRenewals = prometheus.NewDesc("lanegate_fleet_renewals_total",
		"Lease renewals by result: ok or error.", []string{"result"}, nil)
	descFleetLogin = prometheus.NewDesc("lanegate_fleet_login_rate",
		"Logins per second: this replica's part of the fleet's login rate (share; 0 without one) and the fleet's login completion rate its line's estimates use (pace).", []string{"kind"}, nil)
	descFleetLine = prometheus.NewDesc("lanegate_fleet_line_total",
		"Logins and reports of the fleet's shared login line: ranked (by the fleet, one Redis round trip each), local (the fleet could not rank them in time; ranked in this replica's line), reported (outcomes sent, in batches) and dropped (outcomes lost; their places lapse on their own).", []string{"result"}, nil)
)

// fleetCollector exports fleet mode's state at scrape time.
type fleetCollector struct{ src FleetSource }

// Describe sends every descriptor the collector may export.
func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFleetShare, descFleetMembers, descFleetUp, descFleetRenewals, descFleetLogin, descFleetLine} {
		ch <- d
	}
}

// Collect exports the coordinator's state as of now.
func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	for _, l := range admission.Lanes() {
		ch <- prometheus.MustNewConstMetric(descFleetShare, prometheus.GaugeValue, float64(st.Grant.Lane[l].Max), l.String())
	}
	ch <- prometheus.MustNewConstMetric(descFleetMembers, prometheus.GaugeValue, float64(st.Members))
	up := 0.0
	if st.State == fleet.StateOK {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descFleetUp, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(descFleetRenewals, prometheus.CounterValue, float64(st.Renewals-st.Failures), "ok")
	ch <- prometheus.MustNewConstMetric(descFleetRenewals, prometheus.CounterValue, float64(st.Failures), "error")
	ch <- prometheus.MustNewConstMetric(descFleetLogin, prometheus.GaugeValue, st.Grant.Login.Rate, "share")
	ch <- prometheus.MustNewConstMetric(descFleetLogin, prometheus.GaugeValue, st.Grant.LoginRate, "pace")
	ls := c.src.LineStats()
	for _, r := range []struct {
		name string
		n    uint64
	}{{"ranked", ls.Arrived}, {"local", ls.Failed}, {"reported", ls.Reported}, {"dropped", ls.Dropped}} {
		ch <- prometheus.MustNewConstMetric(descFleetLine, prometheus.CounterValue, float64(r.n), r.name)
	}
}

// RegisterFleet adds fleet mode's metrics: this replica's share per lane,
// the fleet's members, and whether the lease is renewed.
func (m *Registry) RegisterFleet(reg prometheus.Registerer, src FleetSource) error {
	return reg.Register(fleetCollector{src})
}
