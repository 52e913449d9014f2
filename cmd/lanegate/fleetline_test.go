package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanegate/lanegate/admin"
	"github.com/lanegate/lanegate/session/redistest"
	"github.com/lanegate/lanegate/waitroom"
)

// loginApp is an app whose logins take service each once released: it
// records the order in which users' logins start and how many run at once.
type loginApp struct {
	*httptest.Server
	release chan struct{}
	mu      sync.Mutex
	order   []int
	now     atomic.Int64
	peak    atomic.Int64
}

func newLoginApp(t *testing.T, service time.Duration) *loginApp {
	a := &loginApp{release: make(chan struct{})}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			fmt.Fprint(w, "page")
			return
		}
		n := a.now.Add(1)
		defer a.now.Add(-1)
		for p := a.peak.Load(); n > p && !a.peak.CompareAndSwap(p, n); p = a.peak.Load() {
		}
		user, _ := strconv.Atoi(r.Header.Get("X-User"))
		a.mu.Lock()
		a.order = append(a.order, user)
		a.mu.Unlock()
		select {
		case <-a.release:
		case <-r.Context().Done():
			return
		}
		select {
		case <-time.After(service): // the password hash
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "logged in")
	}))
	t.Cleanup(a.Close)
	return a
}

// inversions counts the pairs of users served against their order of
// first arrival (user numbers are arrival order), of all pairs.
func inversions(order []int) (inv, pairs int) {
	for i := range order {
		for j := i + 1; j < len(order); j++ {
			pairs++
			if order[i] > order[j] {
				inv++
			}
		}
	}
	return inv, pairs
}

// Three replicas keep one login line. While the app is stuck on the first
// login, users arrive one every 10 ms, each at the next replica
// round-robin (LANEGATE_LOGIN_MAX=1, fleet-wide). Their wait outlasts the
// hold, so each is sent away with a ticket, and comes back at another
// replica than the one that sent it away, in the reverse order: the last
// to arrive first. Once the app moves, logins are served in the order users
// first arrived across the fleet, never two at once, and every user gets
// in.
func TestFleetLoginsInArrivalOrder(t *testing.T) {
	ctx := testContext(t)
	srv := redistest.Start(t)
	app := newLoginApp(t, 20*time.Millisecond)
	var rs []*instance
	for _, id := range []string{"a", "b", "c"} {
		env := append(environ(app.URL), fleetEnv(srv, "order", id)...)
		env = append(env, "LANEGATE_LOGIN_MAX=1", "LANEGATE_LOGIN_MAX_HOLD=1s", "LANEGATE_LOGIN_RATE=0")
		rs = append(rs, start(ctx, t, env))
	}
	c := newClient(t)
	for _, r := range rs {
		pollStatus(ctx, t, c, r, "a fleet of three", func(st admin.Status) bool {
			// A new fleet grows no share for its first lease.
			return st.Fleet != nil && st.Fleet.State == "ok" && st.Fleet.Members == 3 && st.Fleet.Budget > 0
		})
	}

	const users = 18
	var retried atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, users)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for u := range users {
		<-tick.C
		wg.Go(func() {
			ticket := ""
			for attempt := range 20 {
				at := rs[(u+attempt)%len(rs)]
				h := []string{"X-User", strconv.Itoa(u), "Accept", "application/json"}
				if ticket != "" {
					h = append(h, waitroom.TicketHeader, ticket)
				}
				res := do(ctx, c, http.MethodPost, at.proxyURL("/accounts/login/"), "login=u", h...)
				switch {
				case res.err != nil:
					errs <- fmt.Errorf("user %d: %v", u, res.err)
					return
				case res.status == http.StatusOK:
					return
				case res.status != http.StatusServiceUnavailable:
					errs <- fmt.Errorf("user %d: %d %s", u, res.status, res.body)
					return
				}
				if ticket = res.header.Get(waitroom.TicketHeader); ticket == "" {
					errs <- fmt.Errorf("user %d: sent away without a ticket", u)
					return
				}
				retried.Add(1)
				if attempt == 0 {
					// Back in the reverse order of arrival. A ticket ranks
					// its holder whenever it comes back, Retry-After or not.
					select {
					case <-time.After(time.Duration(users-u) * 10 * time.Millisecond):
					case <-ctx.Done():
						return
					}
				}
			}
			errs <- fmt.Errorf("user %d: not logged in after 20 attempts", u)
		})
	}
	// Everyone but the first has been sent away once and is back in line.
	back := func() int {
		n := 0
		for _, r := range rs {
			n += status(ctx, t, c, r).Lanes["login"].Queued
		}
		return n
	}
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for retried.Load() < users-1 || back() < users-1 {
		select {
		case <-poll.C:
		case <-ctx.Done():
			t.Fatalf("users back in line: %d sent away, %d waiting", retried.Load(), back())
		}
	}
	close(app.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	app.mu.Lock()
	order := append([]int(nil), app.order...)
	app.mu.Unlock()
	if len(order) != users {
		t.Fatalf("the app served %d logins, want %d: %v", len(order), users, order)
	}
	if p := app.peak.Load(); p > 1 {
		t.Errorf("%d logins at the app at once, the fleet's login max is 1", p)
	}
	inv, pairs := inversions(order)
	t.Logf("served in order %v: %d of %d pairs out of order (%.1f %%); %d times sent away",
		order, inv, pairs, 100*float64(inv)/float64(pairs), retried.Load())
	if float64(inv) > 0.02*float64(pairs) {
		t.Errorf("%d of %d pairs of logins served out of arrival order, more than 2 %%: %v", inv, pairs, order)
	}
}
