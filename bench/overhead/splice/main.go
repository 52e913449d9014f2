// Command splice is the "go-splice" contender of the overhead benchmark: a
// TCP relay that does not speak HTTP at all. Each client connection gets its
// own upstream connection and two goroutines copying bytes, one each way,
// with io.Copy.
//
// It is a measuring stick, not a proxy: no pooling, no parsing, no budget.
// At one connection its added latency is what Go's runtime, netpoller and
// two extra socket hops cost, without net/http's server; the gap between it
// and go-floor is what net/http's server costs per request.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func relay(client net.Conn, upstream string) {
	defer client.Close()
	up, err := net.DialTimeout("tcp", upstream, 2*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, client)
		_ = up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(client, up)
	_ = client.(*net.TCPConn).CloseWrite()
	<-done
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18086", "address to listen on")
	upstream := flag.String("upstream", "127.0.0.1:18000", "upstream host:port")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "splice:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintln(os.Stderr, "splice:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go relay(c, *upstream)
	}
}
