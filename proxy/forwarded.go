package proxy

import (
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
