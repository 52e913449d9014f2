package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// net/http's transport (HTTPS upstreams, upgrade requests) may go on
// reading a request's body in a goroutine of its own after RoundTrip
// returned, as its documentation allows. The handler's recorder is pooled
// and reused at once: nothing the transport still reads may reach it.
// Under the race detector, a body reader that did would show as a race
// with the next request's use of the recorder.
func TestDetachedBodyReaderLeavesRecorderAlone(t *testing.T) {
	up := testUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Answer at once, without reading the upload.
		w.Header().Set("Connection", "close")
		io.WriteString(w, "early")
	}))
	p := testNewProxy(t, up.URL, testLimits(), Options{BodyReadTimeout: time.Minute})
	addr := p.Server.Listener.Addr().String()
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			// An upgrade request goes through net/http's transport; its
			// chunked body keeps coming after the answer.
			fmt.Fprintf(c, "POST /upload/%d HTTP/1.1\r\nHost: lanegate.test\r\nConnection: Upgrade\r\nUpgrade: x-test\r\nTransfer-Encoding: chunked\r\n\r\n", i)
			buf := make([]byte, 4096)
			c.SetReadDeadline(time.Now().Add(testTimeout))
			go func() {
				for range 50 {
					if _, err := fmt.Fprintf(c, "1000\r\n%s\r\n", make([]byte, 0x1000)); err != nil {
						return
					}
				}
			}()
			c.Read(buf)
		}()
		go func() {
			defer wg.Done()
			res := testFetch(t, p.Client, http.MethodGet, p.Server.URL+"/page", nil, nil)
			testStatus(t, res, http.StatusOK)
		}()
	}
	wg.Wait()
	testWaitIdle(t, p.Ctrl)
}
