package waitroom

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestIsNavigation(t *testing.T) {
	for _, tc := range []struct {
		hdr  map[string]string
		want bool
	}{
		{map[string]string{"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, true},
		{map[string]string{"Sec-Fetch-Mode": "navigate"}, true},
		{map[string]string{"Accept": "text/html,*/*"}, true}, // a browser without Fetch Metadata
		{map[string]string{"Sec-Fetch-Mode": "cors", "Accept": "text/html"}, false},
		{map[string]string{"Accept": "application/json"}, false},
		{map[string]string{"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}, false},
		{map[string]string{"Accept": "*/*"}, false},
		{nil, false},
	} {
		r := httptest.NewRequest(http.MethodPost, "http://lanegate.test/accounts/login/", nil)
		for k, v := range tc.hdr {
			r.Header.Set(k, v)
		}
		if got := IsNavigation(r); got != tc.want {
			t.Errorf("IsNavigation(%v) = %v, want %v", tc.hdr, got, tc.want)
		}
	}
}
