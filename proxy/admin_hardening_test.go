package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func newHardeningAdmin(t *testing.T, token string) *Admin {
	t.Helper()
	gate := testNewGate()
	gate.Open()
	up := testUpstream(t, gate)
	p := testNewProxy(t, up.URL, testLimits(), Options{})
	return NewAdmin(p.Handler, p.Ctrl, AdminOptions{Token: token, Gatherer: prometheus.NewRegistry()}, nil)
}

func adminDo(a *Admin, method, target, auth, body string) *httptest.ResponseRecorder {
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
	a := newHardeningAdmin(t, "")
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
	if got := a.h.Mode(); got != "off" {
		t.Fatalf("mode: got %s, want off", got)
	}
}

func TestAdminBearerScheme(t *testing.T) {
	a := newHardeningAdmin(t, "s3cret")
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
	a := newHardeningAdmin(t, "")
	if got := adminDo(a, http.MethodGet, "http://127.0.0.1/readyz", "", "").Code; got != http.StatusOK {
		t.Fatalf("before draining: got %d, want 200", got)
	}
	a.SetDraining()
	if got := adminDo(a, http.MethodGet, "http://127.0.0.1/readyz", "", "").Code; got != http.StatusServiceUnavailable {
		t.Fatalf("draining: got %d, want 503", got)
	}
}
