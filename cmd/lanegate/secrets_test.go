package main

import (
	"net/http"
	"strings"
	"testing"
)

// TestSecretsNeverShown runs lanegate with every secret set, a Redis URL
// with a password that cannot be reached (so that its errors are
// reported), and reads everything the admin listener serves, and the log:
// no secret appears anywhere. Writes need the token.
func TestSecretsNeverShown(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	const (
		token    = "admin-token-0123456789abcdef"
		identity = "k1:identity-secret-0123456789abcdef0123456789"
		ticket   = "t1:ticket-secret-0123456789abcdef0123456789ab"
		redisPW  = "redis-password-0123456789"
	)
	in := start(ctx, t, environ(up.URL,
		"LANEGATE_ADMIN_TOKEN="+token,
		"LANEGATE_IDENTITY_SECRET="+identity,
		"LANEGATE_TICKET_SECRET="+ticket,
		"LANEGATE_SESSION_STORE=redis",
		"LANEGATE_REDIS_URL=redis://lanegate:"+redisPW+"@127.0.0.1:1/0",
	))
	c := newClient(t)
	auth := []string{"Authorization", "Bearer " + token}

	// Traffic with a session cookie, so the store is used and fails.
	for range 3 {
		if r := do(ctx, c, http.MethodGet, in.proxyURL("/fast/page"), "", "Cookie", "sessionid="+strings.Repeat("a1", 16)); r.status != http.StatusOK {
			t.Fatalf("request with Redis down: got %d %v, want 200 (fail open)", r.status, r.err)
		}
	}
	secrets := []string{token, strings.SplitN(identity, ":", 2)[1], strings.SplitN(ticket, ":", 2)[1], redisPW}
	check := func(what, text string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s shows the secret %q:\n%s", what, s, text)
			}
		}
	}
	for _, path := range []string{"/status", "/metrics", "/admission", "/healthz", "/readyz"} {
		r := do(ctx, c, http.MethodGet, in.adminURL(path), "", auth...)
		if r.err != nil || r.status != http.StatusOK {
			t.Errorf("GET %s with the token: got %d, error %v; want 200", path, r.status, r.err)
		}
		check("GET "+path, r.body)
	}
	if st := status(ctx, t, c, in, auth...); st.Sessions == nil || st.Sessions.Healthy || st.Sessions.LastError == "" {
		t.Errorf("/status: got sessions %+v, want the failing store reported", st.Sessions)
	}
	for _, h := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "Basic " + token}} {
		if r := do(ctx, c, http.MethodPut, in.adminURL("/admission"), "off", h...); r.status != http.StatusUnauthorized {
			t.Errorf("PUT /admission with %v: got %d, want 401", h, r.status)
		}
		if r := do(ctx, c, http.MethodGet, in.adminURL("/status"), "", h...); r.status != http.StatusUnauthorized {
			t.Errorf("GET /status with %v: got %d, want 401", h, r.status)
		}
	}
	if st := status(ctx, t, c, in, auth...); st.Mode != "enforce" {
		t.Errorf("mode after refused writes: got %q, want enforce", st.Mode)
	}
	in.cancel()
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run: %v", err)
	}
	check("the log", in.stderr.String())
}
