package proxy

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
)

// forwardedChain reads an X-Forwarded-For chain that a trusted proxy sent.
// Entries are appended left to right by each proxy, so reading from the
// right, every entry added by a trusted proxy is skipped and the first
// untrusted one is the client: what stands left of it is the client's own
// claim and cannot be believed.
//
// It returns the client and the chain from the client on, which is what
// lanegate forwards so that the first entry Django sees is the client. When
// every entry is trusted the leftmost is the client. ok is false for an
// empty or malformed chain, which is no evidence of anything.
func forwardedChain(values []string, trusted func(netip.Addr) bool) (client netip.Addr, chain []string, ok bool) {
	var entries []string
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			entries = append(entries, strings.TrimSpace(part))
		}
	}
	if len(entries) == 0 {
		return netip.Addr{}, nil, false
	}
	for i := len(entries) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(entries[i])
		if err != nil {
			return netip.Addr{}, nil, false
		}
		a = a.Unmap()
		if !trusted(a) || i == 0 {
			return a, entries[i:], true
		}
	}
	return netip.Addr{}, nil, false // not reached
}

// clientKey is the key of a client's login bucket: its address, or for
// IPv6 its /64, since anyone with one IPv6 address usually has 2^64 of them.
func clientKey(a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		return netip.PrefixFrom(a, 64).Masked().String()
	}
	return a.String()
}

// clientAddr is the address a request came from: the peer, or, when the
// peer is a trusted proxy, the nearest untrusted address it forwarded for.
func (h *Handler) clientAddr(r *http.Request) (netip.Addr, bool) {
	peer, ok := peerAddr(r)
	if !ok || !h.isTrusted(peer) {
		return peer, ok
	}
	if c, _, ok := forwardedChain(r.Header.Values("X-Forwarded-For"), h.isTrusted); ok {
		return c, true
	}
	return peer, true
}

func (h *Handler) isTrusted(a netip.Addr) bool {
	for _, p := range h.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientHTTPS reports whether the client reached lanegate over HTTPS: its
// own connection, or a trusted proxy's word.
func (h *Handler) clientHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	peer, ok := peerAddr(r)
	return ok && h.isTrusted(peer) && r.Header.Get("X-Forwarded-Proto") == "https"
}

func peerAddr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// rewrite builds the outbound request. ReverseProxy has already removed
// hop-by-hop, X-Forwarded-* and Forwarded headers from it.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(h.upstream)
	// Django's CSRF and ALLOWED_HOSTS checks need the client's Host.
	pr.Out.Host = pr.In.Host
	out := pr.Out.Header
	peer, ok := peerAddr(pr.In)
	if ok && h.isTrusted(peer) {
		// Behind a trusted proxy the chain is kept from the client on and
		// the peer appended; entries left of the client are its own claims
		// and are dropped, so the first entry, which allauth keys its
		// limits on, is the client.
		if client, chain, ok := forwardedChain(pr.In.Header.Values("X-Forwarded-For"), h.isTrusted); ok {
			out["X-Forwarded-For"] = []string{strings.Join(chain, ", ") + ", " + peer.String()}
			out["X-Real-Ip"] = []string{client.String()}
		} else {
			out["X-Forwarded-For"] = []string{peer.String()}
			out["X-Real-Ip"] = []string{peer.String()}
		}
		if v := pr.In.Header.Get("X-Forwarded-Proto"); v != "" {
			out["X-Forwarded-Proto"] = []string{v}
		} else {
			out["X-Forwarded-Proto"] = []string{scheme(pr.In)}
		}
		if v := pr.In.Header.Get("X-Forwarded-Host"); v != "" {
			out["X-Forwarded-Host"] = []string{v}
		} else {
			out["X-Forwarded-Host"] = []string{pr.In.Host}
		}
		return
	}
	// From anyone else any claim about the client is overwritten or
	// dropped, or the client picks the address Django rate-limits by.
	addr := pr.In.RemoteAddr
	if ok {
		addr = peer.String()
	} else if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	out["X-Forwarded-For"] = []string{addr}
	out["X-Real-Ip"] = []string{addr}
	for _, name := range spoofableClientHeaders {
		delete(out, name)
	}
	// WSGI servers turn X_Forwarded_For and X-Forwarded-For into the same
	// HTTP_X_FORWARDED_FOR, so an underscore spelling from an untrusted
	// client could stand in for a header just overwritten. Like nginx by
	// default, headers with an underscore in their name are dropped.
	for name := range out {
		if strings.IndexByte(name, '_') >= 0 {
			delete(out, name)
		}
	}
	out["X-Forwarded-Host"] = []string{pr.In.Host}
	out["X-Forwarded-Proto"] = []string{scheme(pr.In)}
}

// spoofableClientHeaders name the client in some CDNs' and proxies'
// dialects; only a trusted proxy may send them on.
var spoofableClientHeaders = []string{"True-Client-Ip", "X-Client-Ip", "Cf-Connecting-Ip", "Fastly-Client-Ip", "X-Cluster-Client-Ip"}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}
