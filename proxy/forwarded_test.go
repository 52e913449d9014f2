package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestForwardedChain(t *testing.T) {
	trusted := func(a netip.Addr) bool { return netip.MustParsePrefix("10.0.0.0/8").Contains(a) }
	tests := []struct {
		name       string
		values     []string
		wantClient string
		wantChain  string
		wantOK     bool
	}{
		{"one client", []string{"6.6.6.6"}, "6.6.6.6", "6.6.6.6", true},
		{"client claims drop", []string{"1.1.1.1, 6.6.6.6"}, "6.6.6.6", "6.6.6.6", true},
		{"trusted hops kept", []string{"1.1.1.1, 6.6.6.6, 10.0.0.2"}, "6.6.6.6", "6.6.6.6, 10.0.0.2", true},
		{"several header lines", []string{"1.1.1.1", "6.6.6.6, 10.0.0.2"}, "6.6.6.6", "6.6.6.6, 10.0.0.2", true},
		{"all trusted", []string{"10.0.0.1, 10.0.0.2"}, "10.0.0.1", "10.0.0.1, 10.0.0.2", true},
		{"mapped v4", []string{"::ffff:6.6.6.6"}, "6.6.6.6", "::ffff:6.6.6.6", true},
		{"malformed", []string{"6.6.6.6, nonsense"}, "", "", false},
		{"empty", nil, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, chain, ok := forwardedChain(tt.values, trusted)
			if ok != tt.wantOK {
				t.Fatalf("ok: got %v, want %v", ok, tt.wantOK)
			}
			if !ok {
				return
			}
			if client.String() != tt.wantClient || strings.Join(chain, ", ") != tt.wantChain {
				t.Fatalf("got %s [%s], want %s [%s]", client, strings.Join(chain, ", "), tt.wantClient, tt.wantChain)
			}
		})
	}
}

func TestClientKey(t *testing.T) {
	tests := map[string]string{
		"192.0.2.7":                 "192.0.2.7",
		"2001:db8:1:2:aaaa::1":      "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff:ffff::9": "2001:db8:1:2::/64",
		"::ffff:192.0.2.7":          "::ffff:192.0.2.7",
	}
	for in, want := range tests {
		if got := clientKey(netip.MustParseAddr(in)); got != want {
			t.Errorf("clientKey(%s): got %s, want %s", in, got, want)
		}
	}
}

// Behind a trusted proxy, Django must see the client first in
// X-Forwarded-For and in X-Real-IP, whatever the client prepended; from an
// untrusted peer, every header naming a client is the peer or gone.
func TestForwardClientHeaders(t *testing.T) {
	tests := []struct {
		name     string
		trusted  []netip.Prefix
		hdr      map[string]string
		wantXFF  string
		wantReal string
	}{
		{
			name:    "trusted: client's own claims dropped",
			trusted: testLoopback,
			hdr: map[string]string{
				"X-Forwarded-For": "1.1.1.1, 6.6.6.6",
				"X-Real-IP":       "1.1.1.1",
			},
			wantXFF:  "6.6.6.6, 127.0.0.1",
			wantReal: "6.6.6.6",
		},
		{
			name: "untrusted: real IP and CDN headers not believed",
			hdr: map[string]string{
				"X-Forwarded-For":  "6.6.6.6",
				"X-Real-IP":        "6.6.6.6",
				"True-Client-IP":   "6.6.6.6",
				"CF-Connecting-IP": "6.6.6.6",
			},
			wantXFF:  "127.0.0.1",
			wantReal: "127.0.0.1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gate := testNewGate()
			gate.Open()
			up := testUpstream(t, gate)
			p := testNewProxy(t, up.URL, testLimits(), Options{TrustedProxies: tt.trusted})
			res := testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/page", tt.hdr, nil)
			testStatus(t, res, http.StatusOK)
			a := testAwait(t, gate)
			if got := strings.Join(a.Header.Values("X-Forwarded-For"), ", "); got != tt.wantXFF {
				t.Errorf("X-Forwarded-For: got %q, want %q", got, tt.wantXFF)
			}
			if got := a.Header.Get("X-Real-IP"); got != tt.wantReal {
				t.Errorf("X-Real-IP: got %q, want %q", got, tt.wantReal)
			}
			if tt.trusted == nil {
				for _, h := range []string{"True-Client-IP", "CF-Connecting-IP"} {
					if got := a.Header.Get(h); got != "" {
						t.Errorf("%s: got %q, want it dropped", h, got)
					}
				}
			}
		})
	}
}

func TestLogPathRedacted(t *testing.T) {
	h := &Handler{redact: []string{"/accounts/password/reset/key/", "/accounts/confirm-email/"}}
	tests := map[string]string{
		"/accounts/password/reset/key/3-abc123-def/": "/accounts/password/reset/key/<redacted>",
		"/accounts/confirm-email/Mjk:1abc:xyz/":      "/accounts/confirm-email/<redacted>",
		"/accounts/password/reset/key/":              "/accounts/password/reset/key/",
		"/dashboard/":                                "/dashboard/",
	}
	for in, want := range tests {
		if got := h.logPath(in); got != want {
			t.Errorf("logPath(%q): got %q, want %q", in, got, want)
		}
	}
}
