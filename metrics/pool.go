package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lanegate/lanegate/poolwatch"
)

// PoolSource is what the pool metrics read from the pool watcher.
type PoolSource interface {
	Status() poolwatch.Status
}

var (
	descEffective = prometheus.NewDesc("lanegate_effective_budget",
		"Requests allowed in flight now: the static budget, narrowed by the pool watcher while the pool's other clients hold connections.", nil, nil)
	descStatic = prometheus.NewDesc("lanegate_static_budget",
		"The configured budget (LANEGATE_BUDGET or derived from the pool), which the effective budget never exceeds.", nil, nil)
	descPoolUp = prometheus.NewDesc("lanegate_pool_watcher_up",
		"1 while PgBouncer's console answers and its last reading is fresh; 0 while lanegate works on its static budget for want of one.", nil, nil)
	descPoolClients = prometheus.NewDesc("lanegate_pool_clients",
		"PgBouncer's client connections of the app's pool (SHOW POOLS) by state: active (cl_active) or waiting (cl_waiting), at the last reading.", []string{"state"}, nil)
	descPoolServers = prometheus.NewDesc("lanegate_pool_servers",
		"PgBouncer's server connections of the app's pool (SHOW POOLS) by state: active, idle, used, tested, login, at the last reading.", []string{"state"}, nil)
	descPoolSize = prometheus.NewDesc("lanegate_pool_size",
		"Server connections the app's pool may open (SHOW DATABASES pool_size), summed over the consoles watched.", nil, nil)
	descPoolMaxWait = prometheus.NewDesc("lanegate_pool_maxwait_seconds",
		"How long the oldest client waiting in PgBouncer for a server connection has waited (maxwait), at the last reading.", nil, nil)
	descPoolOthers = prometheus.NewDesc("lanegate_pool_others",
		"Server connections the pool's other clients (not lanegate's requests) hold or wait for, as the pool watcher estimates them.", nil, nil)
	descPoolAge = prometheus.NewDesc("lanegate_pool_reading_age_seconds",
		"Age of the last good reading of PgBouncer's console.", nil, nil)
	descPoolReads = prometheus.NewDesc("lanegate_pool_reads_total",
		"Reads of PgBouncer's console by result: ok or error.", []string{"result"}, nil)
)

// poolCollector exports the pool watcher's state at scrape time.
type poolCollector struct{ src PoolSource }

// Describe sends every descriptor the collector may export.
func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoolUp, descPoolClients, descPoolServers, descPoolSize, descPoolMaxWait, descPoolOthers, descPoolAge, descPoolReads} {
		ch <- d
	}
}

// Collect exports the pool as of the watcher's last reading.
func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	up := 0.0
	if st.State == poolwatch.StateOK {
		up = 1
	}
	gauge(descPoolUp, up)
	ch <- prometheus.MustNewConstMetric(descPoolReads, prometheus.CounterValue, float64(st.Reads-st.Failures), "ok")
	ch <- prometheus.MustNewConstMetric(descPoolReads, prometheus.CounterValue, float64(st.Failures), "error")
	if st.At.IsZero() {
		return // nothing read yet: no figures rather than zeros
	}
	p := st.Reading.Pool
	gauge(descPoolClients, float64(p.ClActive), "active")
	gauge(descPoolClients, float64(p.ClWaiting), "waiting")
	gauge(descPoolServers, float64(p.SvActive), "active")
	gauge(descPoolServers, float64(p.SvIdle), "idle")
	gauge(descPoolServers, float64(p.SvUsed), "used")
	gauge(descPoolServers, float64(p.SvTested), "tested")
	gauge(descPoolServers, float64(p.SvLogin), "login")
	gauge(descPoolSize, float64(p.Size))
	gauge(descPoolMaxWait, p.MaxWait.Seconds())
	gauge(descPoolOthers, float64(st.Others))
	gauge(descPoolAge, st.Age.Seconds())
}

// RegisterPool adds the pool watcher's metrics: the pool's figures at the
// last reading, the watcher's estimate of the other clients, and whether
// the console answers.
func (m *Registry) RegisterPool(reg prometheus.Registerer, src PoolSource) error {
	return reg.Register(poolCollector{src})
}
