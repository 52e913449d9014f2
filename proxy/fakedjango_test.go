package proxy_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeDjango is an http.Handler that fails the way Django does behind a
// small PgBouncer pool. Every request that needs the database must get one
// of Pool server connections within QueryWait, PgBouncer's
// query_wait_timeout, or it answers 500 as Django does on the
// OperationalError. A login POST holds its connection for LoginHold,
// hashing the password and inserting the session row; any other request
// holds one for CoreHold. Static files need no connection.
//
// Connections are handed out in arrival order, as PgBouncer does, and a
// request whose client goes away gives its connection back, whether it was
// still waiting or already holding one.
type fakeDjango struct {
	cfg fakeDjangoConfig

	// pool holds one token per connection in use.
	pool chan struct{}

	inUse    atomic.Int64
	maxInUse atomic.Int64
	sessions atomic.Uint64

	mu     sync.Mutex
	served map[fakeKey]int
}

// fakeDjangoConfig are the fake's timings, scaled down from production
// (query_wait_timeout of seconds, password hashing of hundreds of ms).
type fakeDjangoConfig struct {
	// Pool is PgBouncer's default_pool_size: server connections shared by
	// every Django worker.
	Pool int
	// QueryWait is PgBouncer's query_wait_timeout: how long a request may
	// wait for a connection before it fails with 500.
	QueryWait time.Duration
	// LoginHold is how long a login POST holds its connection.
	LoginHold time.Duration
	// CoreHold is how long any other database request holds one.
	CoreHold time.Duration
	// LoginPrefix is the path of the login view; a POST under it is a
	// login.
	LoginPrefix string
	// StaticPrefix is served without touching the database.
	StaticPrefix string
}

// The kinds of request the fake tells apart, and the status it records for
// a request whose client left before the answer.
const (
	fakeLogin  = "login"
	fakeCore   = "core"
	fakeStatic = "static"

	fakeClientGone = 499
)

// fakeQueryWaitBody is the fake's 500 body, naming PgBouncer's error so a
// test can tell it from any other 500.
const fakeQueryWaitBody = "OperationalError: query_wait_timeout\n"

type fakeKey struct {
	kind   string
	status int
}

// errQueryWait is what a request gets when no connection freed up in time.
var errQueryWait = errors.New("query_wait_timeout")

func newFakeDjango(cfg fakeDjangoConfig) *fakeDjango {
	if cfg.Pool < 1 {
		panic("fakeDjango: pool must hold at least one connection")
	}
	return &fakeDjango{
		cfg:    cfg,
		pool:   make(chan struct{}, cfg.Pool),
		served: make(map[fakeKey]int),
	}
}

func (f *fakeDjango) kindOf(r *http.Request) string {
	switch {
	case f.cfg.StaticPrefix != "" && strings.HasPrefix(r.URL.Path, f.cfg.StaticPrefix):
		return fakeStatic
	case f.cfg.LoginPrefix != "" && strings.HasPrefix(r.URL.Path, f.cfg.LoginPrefix) && r.Method == http.MethodPost:
		return fakeLogin
	}
	return fakeCore
}

func (f *fakeDjango) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := f.kindOf(r)
	// Django reads the form before the view runs.
	_, _ = io.Copy(io.Discard, r.Body)

	if kind == fakeStatic {
		f.record(kind, http.StatusOK)
		w.Header().Set("Content-Type", "text/css")
		_, _ = io.WriteString(w, "body{}\n")
		return
	}

	hold := f.cfg.CoreHold
	if kind == fakeLogin {
		hold = f.cfg.LoginHold
	}
	ctx := r.Context()
	release, err := f.acquire(ctx)
	if err != nil {
		if errors.Is(err, errQueryWait) {
			f.record(kind, http.StatusInternalServerError)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, fakeQueryWaitBody)
			return
		}
		f.record(kind, fakeClientGone)
		return
	}
	timer := time.NewTimer(hold)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		release()
		f.record(kind, fakeClientGone)
		return
	}
	// The transaction is over: PgBouncer has the connection back before
	// the response reaches the client.
	release()

	if kind == fakeLogin {
		var b [16]byte
		_, _ = rand.Read(b[:])
		f.sessions.Add(1)
		http.SetCookie(w, &http.Cookie{
			Name: "sessionid", Value: hex.EncodeToString(b[:]),
			Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		})
		w.Header().Set("Location", "/dashboard/")
		w.WriteHeader(http.StatusFound)
		f.record(kind, http.StatusFound)
		return
	}
	f.record(kind, http.StatusOK)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = io.WriteString(w, "<!doctype html><title>Dashboard</title><p>ok</p>\n")
}

// acquire takes a connection, waiting at most QueryWait, and returns the
// function that gives it back. It fails with errQueryWait when the wait
// runs out and with the context's error when the client leaves first.
func (f *fakeDjango) acquire(ctx context.Context) (release func(), err error) {
	select {
	case f.pool <- struct{}{}:
	default:
		timer := time.NewTimer(f.cfg.QueryWait)
		defer timer.Stop()
		select {
		case f.pool <- struct{}{}:
		case <-timer.C:
			return nil, errQueryWait
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	n := f.inUse.Add(1)
	for {
		m := f.maxInUse.Load()
		if n <= m || f.maxInUse.CompareAndSwap(m, n) {
			break
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			// Counted free before the token returns, so inUse never
			// exceeds the pool.
			f.inUse.Add(-1)
			<-f.pool
		})
	}, nil
}

func (f *fakeDjango) record(kind string, status int) {
	f.mu.Lock()
	f.served[fakeKey{kind, status}]++
	f.mu.Unlock()
}

// count returns how many requests of kind were answered with status.
func (f *fakeDjango) count(kind string, status int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.served[fakeKey{kind, status}]
}

// MaxInUse is the most connections held at once since the fake started.
func (f *fakeDjango) MaxInUse() int { return int(f.maxInUse.Load()) }

// InUse is the number of connections held now.
func (f *fakeDjango) InUse() int { return int(f.inUse.Load()) }

// String summarises what the fake served, for logs.
func (f *fakeDjango) String() string {
	f.mu.Lock()
	keys := make([]fakeKey, 0, len(f.served))
	for k := range f.served {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b fakeKey) int {
		if c := strings.Compare(a.kind, b.kind); c != 0 {
			return c
		}
		return a.status - b.status
	})
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s/%d=%d ", k.kind, k.status, f.served[k])
	}
	f.mu.Unlock()
	fmt.Fprintf(&b, "max_conns=%d/%d sessions=%d", f.MaxInUse(), f.cfg.Pool, f.sessions.Load())
	return b.String()
}

// TestStormFakeDjangoReleasesOnClientGone checks that the fake gives its
// connection back when the client leaves, both while holding it and while
// still waiting for it, so a storm's abandoned requests cannot leave the
// pool drained.
func TestStormFakeDjangoReleasesOnClientGone(t *testing.T) {
	fake := newFakeDjango(fakeDjangoConfig{
		Pool:        1,
		QueryWait:   5 * time.Second,
		LoginHold:   5 * time.Second,
		CoreHold:    5 * time.Second,
		LoginPrefix: "/accounts/login/",
	})
	srv := httptest.NewServer(fake)
	client := newStormClient(2)
	defer client.CloseIdleConnections()

	// One request holds the only connection, the other waits for it; both
	// clients give up long before either could be answered.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var login, page stormOutcome
	wg.Go(func() {
		login = stormDo(ctx, client, fakeLogin, http.MethodPost, srv.URL+"/accounts/login/", "login=a")
	})
	wg.Go(func() { page = stormDo(ctx, client, fakeCore, http.MethodGet, srv.URL+"/dashboard/", "") })
	wg.Wait()
	began := time.Now()
	// Close returns once every handler has: at once if they noticed their
	// clients leave, after the 5 s hold if they did not.
	srv.Close()

	if login.err == nil || page.err == nil {
		t.Fatalf("clients were answered (login %d, page %d), want both to time out", login.status, page.status)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("handlers took %s to finish after their clients left", d)
	}
	if n := fake.count(fakeLogin, fakeClientGone) + fake.count(fakeCore, fakeClientGone); n != 2 {
		t.Errorf("fake recorded %d requests whose client left, want 2: %s", n, fake)
	}
	if fake.InUse() != 0 || len(fake.pool) != 0 {
		t.Errorf("after the clients left: %d connections in use, %d pool tokens held; want 0, 0", fake.InUse(), len(fake.pool))
	}
}
