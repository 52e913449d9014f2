// Package nettest holds what tests need of the network that no package of
// the standard library gives: a client on a slow, narrow link, and a free
// port and an output buffer for the servers tests start as processes
// (redis-server, PgBouncer).
package nettest

import (
	"fmt"
	"net"
	"syscall"
)

// DialNarrow connects to addr with a receive buffer of rcvbuf bytes,
// which also stops the kernel from growing it: a client that reads
// slowly then absorbs no more than a phone on a bad network would, where
// loopback's autotuned buffers would take megabytes.
func DialNarrow(addr string, rcvbuf int) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nettest: dial %s: %w", addr, err)
	}
	return c, nil
}
