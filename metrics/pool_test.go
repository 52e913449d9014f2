package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lanegate/lanegate/poolwatch"
)

type poolFunc func() poolwatch.Status

func (f poolFunc) Status() poolwatch.Status { return f() }

func TestPoolMetrics(t *testing.T) {
	st := poolwatch.Status{State: poolwatch.StateStarting, Reads: 0}
	reg := prometheus.NewRegistry()
	var m Registry
	if err := m.RegisterPool(reg, poolFunc(func() poolwatch.Status { return st })); err != nil {
		t.Fatal(err)
	}
	// Before the first reading: the watcher is down and no pool figures
	// are made up.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP lanegate_pool_watcher_up 1 while PgBouncer's console answers and its last reading is fresh; 0 while lanegate works on its static budget for want of one.
# TYPE lanegate_pool_watcher_up gauge
lanegate_pool_watcher_up 0
`), "lanegate_pool_watcher_up", "lanegate_pool_clients"); err != nil {
		t.Fatal(err)
	}
	st = poolwatch.Status{
		State: poolwatch.StateOK, At: time.Now(), Age: 250 * time.Millisecond, Others: 6, Reads: 5, Failures: 1,
		Reading: poolwatch.Reading{Pool: poolwatch.Pool{Size: 8, ClActive: 7, ClWaiting: 2, SvActive: 8, MaxWait: 2 * time.Second}},
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP lanegate_pool_clients PgBouncer's client connections of the app's pool (SHOW POOLS) by state: active (cl_active) or waiting (cl_waiting), at the last reading.
# TYPE lanegate_pool_clients gauge
lanegate_pool_clients{state="active"} 7
lanegate_pool_clients{state="waiting"} 2
# HELP lanegate_pool_maxwait_seconds How long the oldest client waiting in PgBouncer for a server connection has waited (maxwait), at the last reading.
# TYPE lanegate_pool_maxwait_seconds gauge
lanegate_pool_maxwait_seconds 2
# HELP lanegate_pool_others Server connections the pool's other clients (not lanegate's requests) hold or wait for, as the pool watcher estimates them.
# TYPE lanegate_pool_others gauge
lanegate_pool_others 6
# HELP lanegate_pool_reads_total Reads of PgBouncer's console by result: ok or error.
# TYPE lanegate_pool_reads_total counter
lanegate_pool_reads_total{result="error"} 1
lanegate_pool_reads_total{result="ok"} 4
# HELP lanegate_pool_watcher_up 1 while PgBouncer's console answers and its last reading is fresh; 0 while lanegate works on its static budget for want of one.
# TYPE lanegate_pool_watcher_up gauge
lanegate_pool_watcher_up 1
`), "lanegate_pool_watcher_up", "lanegate_pool_clients", "lanegate_pool_maxwait_seconds", "lanegate_pool_others", "lanegate_pool_reads_total"); err != nil {
		t.Fatal(err)
	}
}
