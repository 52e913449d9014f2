package admin

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/waitroom"
)

// testPlane is a data plane of nothing but a mode.
type testPlane struct {
	mu   sync.Mutex
	mode admission.Mode
}

func (p *testPlane) Mode() admission.Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

func (p *testPlane) SetMode(m admission.Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
}

func (p *testPlane) RoomStatus(admission.RoomStats) *waitroom.Status { return nil }
func (p *testPlane) Bypassed() uint64                                { return 0 }

// newHardeningAdmin is an admin server in front of an upstream that
// accepts connections, over a real controller.
func newHardeningAdmin(t *testing.T, token string) (*Server, *testPlane) {
	t.Helper()
	var lim admission.Limits
	lim.Budget = 1
	lim.Lane[admission.Core] = admission.LaneLimits{Max: 1}
	a, _, plane := newTestAdmin(t, lim, Options{Token: token})
	return a, plane
}

// newTestAdmin is an admin server with opts, in front of an upstream that
// accepts connections, over a real controller of lim.
func newTestAdmin(t *testing.T, lim admission.Limits, opts Options) (*Server, *admission.Controller, *testPlane) {
	t.Helper()
	up := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(up.Close)
	u, err := url.Parse(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := admission.New(lim)
	if err != nil {
		t.Fatal(err)
	}
	plane := &testPlane{mode: admission.Enforce}
	opts.Gatherer, opts.Upstream = prometheus.NewRegistry(), u
	return New(plane, ctrl, opts, nil), ctrl, plane
}

func adminDo(a *Server, method, target, auth, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	return rec
}

// Without a token the admin port trusts loopback, so a page in a browser
// must not reach it by DNS rebinding (a Host of its own domain).
func TestAdminRefusesForeignHostWithoutToken(t *testing.T) {
	a, plane := newHardeningAdmin(t, "")
	tests := []struct {
		target string
		want   int
	}{
		{"http://evil.example:9090/admission", http.StatusForbidden},
		{"http://127.0.0.1:9090/admission", http.StatusOK},
		{"http://localhost:9090/admission", http.StatusOK},
		{"http://[::1]:9090/admission", http.StatusOK},
	}
	for _, tt := range tests {
		if got := adminDo(a, http.MethodPut, tt.target, "", "off").Code; got != tt.want {
			t.Errorf("PUT %s: got %d, want %d", tt.target, got, tt.want)
		}
	}
	if got := plane.Mode(); got != admission.Off {
		t.Fatalf("mode: got %s, want off", got)
	}
}

func TestAdminBearerScheme(t *testing.T) {
	a, _ := newHardeningAdmin(t, "s3cret")
	tests := []struct {
		auth string
		want int
	}{
		{"Bearer s3cret", http.StatusOK},
		{"bearer s3cret", http.StatusOK},
		{"Bearer s3cre", http.StatusUnauthorized},
		{"Basic s3cret", http.StatusUnauthorized},
		{"s3cret", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		if got := adminDo(a, http.MethodGet, "http://lb.internal:9090/status", tt.auth, "").Code; got != tt.want {
			t.Errorf("Authorization %q: got %d, want %d", tt.auth, got, tt.want)
		}
	}
}

func TestAdminReadyzDraining(t *testing.T) {
	a, _ := newHardeningAdmin(t, "")
	if got := adminDo(a, http.MethodGet, "http://127.0.0.1/readyz", "", "").Code; got != http.StatusOK {
		t.Fatalf("before draining: got %d, want 200", got)
	}
	a.SetDraining()
	if got := adminDo(a, http.MethodGet, "http://127.0.0.1/readyz", "", "").Code; got != http.StatusServiceUnavailable {
		t.Fatalf("draining: got %d, want 503", got)
	}
}
