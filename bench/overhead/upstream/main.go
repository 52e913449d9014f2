// Command upstream is the trivial HTTP upstream fronted by every contender in
// the overhead benchmark: it answers GET / with a fixed 100-byte 200 body over
// keep-alive connections and does nothing else (no logging, no per-request
// allocation beyond what net/http needs).
//
// GET /_bench/conns returns how many TCP connections it has accepted so far,
// counting the one that asks, so the harness can tell whether a proxy reuses
// its upstream connections or opens new ones under load.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// body is exactly 100 bytes so that every contender moves the same payload.
var body = []byte("lanegate overhead benchmark: trivial upstream response body, fixed size, padded to 100 bytes.......\n")

// accepted counts the TCP connections accepted since start.
var accepted atomic.Int64

func countConns(_ net.Conn, state http.ConnState) {
	if state == http.StateNew {
		accepted.Add(1)
	}
}

func handler(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_bench/conns" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, accepted.Load())
		return
	}
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	h["Content-Length"] = []string{contentLength}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
}

var contentLength = strconv.Itoa(len(body))

func main() {
	listen := flag.String("listen", "127.0.0.1:18000", "address to listen on")
	flag.Parse()

	srv := &http.Server{
		Addr:              *listen,
		Handler:           http.HandlerFunc(handler),
		ConnState:         countConns,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()

	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			os.Exit(1)
		}
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}
}
