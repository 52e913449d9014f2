package admin

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/poolwatch"
)

// fakePool is a pool watcher whose state the test sets.
type fakePool struct {
	mu sync.Mutex
	st poolwatch.Status
}

func (p *fakePool) Status() poolwatch.Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

func (p *fakePool) set(st poolwatch.Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st = st
}

func newPoolAdmin(t *testing.T, pool Pool) (*Server, *admission.Controller) {
	t.Helper()
	var lim admission.Limits
	lim.Budget = 8
	lim.Lane[admission.Core] = admission.LaneLimits{Reserved: 4, Max: 8}
	lim.Lane[admission.Login] = admission.LaneLimits{Reserved: 1, Max: 2}
	a, ctrl, _ := newTestAdmin(t, lim, Options{Pool: pool})
	return a, ctrl
}

func TestStatusShowsThePool(t *testing.T) {
	at := time.Now().Add(-300 * time.Millisecond)
	pool := &fakePool{st: poolwatch.Status{
		State: poolwatch.StateOK, Follow: true, At: at, Age: 300 * time.Millisecond,
		Reading: poolwatch.Reading{Consoles: 1,
			Pool:     poolwatch.Pool{Database: "app", User: "app", Size: 8, ClActive: 9, ClWaiting: 1, SvActive: 8, MaxWait: 1500 * time.Millisecond, Mode: "session"},
			Settings: poolwatch.Settings{QueryWaitTimeout: 5 * time.Second}},
		InFlight: 3, Others: 6, Effective: 2, Static: 8, Reads: 10, Failures: 1,
	}}
	a, ctrl := newPoolAdmin(t, pool)
	ctrl.Constrain(2)
	rec := adminDo(a, http.MethodGet, "http://127.0.0.1:9090/status", "", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("/status: %d %s", rec.Code, rec.Body)
	}
	var st Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Budget != 2 || st.StaticBudget != 8 {
		t.Errorf("budget %d of %d, want 2 of 8", st.Budget, st.StaticBudget)
	}
	p := st.Pool
	if p == nil {
		t.Fatalf("no pool section in %s", rec.Body)
	}
	if p.State != "ok" || p.Size != 8 || p.ClWaiting != 1 || p.SvActive != 8 || p.Others != 6 ||
		p.EffectiveBudget != 2 || p.StaticBudget != 8 || p.MaxWait != "1.5s" || p.QueryWaitTimeout != "5s" ||
		p.Age != "300ms" || p.Database != "app" || p.Failures != 1 {
		t.Errorf("pool section %+v", p)
	}
	if got := st.Lanes["core"].Max; got != 2 {
		t.Errorf("core max %d under the effective budget of 2, want 2", got)
	}
}

func TestStatusWithoutWatcherHasNoPool(t *testing.T) {
	a, _ := newPoolAdmin(t, nil)
	rec := adminDo(a, http.MethodGet, "http://127.0.0.1:9090/status", "", "")
	if strings.Contains(rec.Body.String(), `"pool"`) {
		t.Fatalf("pool section without a watcher: %s", rec.Body)
	}
}

// A lost console degrades readiness but keeps it: lanegate works on its
// static budget, as it did before it had a watcher.
func TestReadyzDegradedWhileConsoleLost(t *testing.T) {
	pool := &fakePool{st: poolwatch.Status{State: poolwatch.StateOK}}
	a, _ := newPoolAdmin(t, pool)
	rec := adminDo(a, http.MethodGet, "http://127.0.0.1:9090/readyz", "", "")
	if rec.Code != http.StatusOK || rec.Body.String() != "ok\n" {
		t.Fatalf("healthy: %d %q", rec.Code, rec.Body)
	}
	pool.set(poolwatch.Status{State: poolwatch.StateDegraded, LastError: "connection refused"})
	rec = adminDo(a, http.MethodGet, "http://127.0.0.1:9090/readyz", "", "")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "degraded: PgBouncer's console unreadable") {
		t.Fatalf("console lost: %d %q; want 200 and degraded", rec.Code, rec.Body)
	}
}
