package main

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// kind is what a request asks for; each kind takes one lanegate lane.
type kind int

const (
	kindLogin  kind = iota // POST /accounts/login/: the login lane
	kindCore               // GET /dashboard/, /api/items/N/: the core lane
	kindExport             // GET /reports/N.csv: the export lane
	kindStatic             // GET /static/app.N.js: bypass
	numKinds
)

// String is the kind's name, as the upstream echoes it in X-Soak-Kind.
func (k kind) String() string {
	switch k {
	case kindLogin:
		return "login"
	case kindCore:
		return "core"
	case kindExport:
		return "export"
	case kindStatic:
		return "static"
	}
	return "unknown"
}

// lane is the lane label lanegate counts the kind's requests under.
func (k kind) lane() string {
	if k == kindStatic {
		return "bypass"
	}
	return k.String()
}

// Headers the fake upstream sets on every 200, for the client to check
// that the response reached the right handler and arrived whole.
const (
	headerKind  = "X-Soak-Kind"
	headerBytes = "X-Soak-Bytes"
	// headerWatch carries an id on requests the client means to cancel
	// before the headers; the upstream notes when each arrives, to tell
	// whether lanegate forwarded it after the client had left.
	headerWatch = "X-Soak-Watch"
)

// upstream is the fake Django app: random service times per kind, some
// responses slow, exports streamed in chunks. Every wait ends early when
// lanegate cancels the request, as a real app's would not, so that the
// soak's own goroutines stay bounded.
type upstream struct {
	url     string
	srv     *http.Server
	payload []byte
	served  [numKinds]atomic.Int64
	watched sync.Map // headerWatch id → time.Time of arrival
	stopped chan struct{}
}

// payloadSize is the largest body the upstream sends.
const payloadSize = 512 << 10

func startUpstream() (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("upstream listen: %w", err)
	}
	u := &upstream{url: "http://" + ln.Addr().String(), payload: make([]byte, payloadSize), stopped: make(chan struct{})}
	for i := range u.payload {
		// CSV-ish printable text with a newline every 64 bytes.
		if i%64 == 63 {
			u.payload[i] = '\n'
		} else {
			u.payload[i] = 'a' + byte(i%26)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /accounts/login/", u.login)
	mux.HandleFunc("GET /dashboard/", u.core)
	mux.HandleFunc("GET /api/items/{id}/", u.core)
	mux.HandleFunc("GET /reports/{name}", u.export)
	mux.HandleFunc("GET /static/{name}", u.static)
	// An idle timeout well above lanegate's upstream idle timeout (1 s),
	// as the README advises, so lanegate never reuses a closing
	// connection.
	u.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	go func() {
		defer close(u.stopped)
		if err := u.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic(fmt.Sprintf("soak: upstream: %v", err))
		}
	}()
	return u, nil
}

func (u *upstream) close() {
	u.srv.Close()
	<-u.stopped
}

// seen is how many requests of each kind reached the upstream.
func (u *upstream) seen() [numKinds]int64 {
	var n [numKinds]int64
	for i := range n {
		n[i] = u.served[i].Load()
	}
	return n
}

// arrive counts a request of kind k and notes when a watched one came.
func (u *upstream) arrive(k kind, r *http.Request) {
	u.served[k].Add(1)
	if id := r.Header.Get(headerWatch); id != "" {
		u.watched.Store(id, time.Now())
	}
}

// arrival is when the watched request id reached the upstream, if it did.
func (u *upstream) arrival(id string) (time.Time, bool) {
	v, ok := u.watched.Load(id)
	if !ok {
		return time.Time{}, false
	}
	return v.(time.Time), true
}

// between is a random duration in [lo, hi).
func between(lo, hi time.Duration) time.Duration {
	return lo + rand.N(hi-lo)
}

// reply writes a whole body of n bytes with its length.
func (u *upstream) reply(w http.ResponseWriter, k kind, contentType string, n int) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(n))
	h.Set(headerKind, k.String())
	h.Set(headerBytes, strconv.Itoa(n))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(u.payload[:n])
}

// login reads the form, then "hashes a password": 50-300 ms, 5 % of
// them 1-2 s.
func (u *upstream) login(w http.ResponseWriter, r *http.Request) {
	u.arrive(kindLogin, r)
	if _, err := io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20)); err != nil {
		return // lanegate answers the client; nothing to do here
	}
	d := between(50*time.Millisecond, 300*time.Millisecond)
	if rand.IntN(100) < 5 {
		d = between(time.Second, 2*time.Second)
	}
	if !sleep(r.Context(), d) {
		return
	}
	u.reply(w, kindLogin, "text/html; charset=utf-8", 512+rand.IntN(1024))
}

// core is a page or an API call: 5-50 ms, 3 % of them 0.3-1.5 s.
func (u *upstream) core(w http.ResponseWriter, r *http.Request) {
	u.arrive(kindCore, r)
	d := between(5*time.Millisecond, 50*time.Millisecond)
	if rand.IntN(100) < 3 {
		d = between(300*time.Millisecond, 1500*time.Millisecond)
	}
	if !sleep(r.Context(), d) {
		return
	}
	u.reply(w, kindCore, "text/html; charset=utf-8", 2<<10+rand.IntN(30<<10))
}

// export is a report: 0.1-0.5 s before the headers, then 64-512 KiB in
// 8-16 chunks spread over 1-3 s, flushed one by one and without a length,
// so lanegate relays a stream.
func (u *upstream) export(w http.ResponseWriter, r *http.Request) {
	u.arrive(kindExport, r)
	if !sleep(r.Context(), between(100*time.Millisecond, 500*time.Millisecond)) {
		return
	}
	total := 64<<10 + rand.IntN(448<<10)
	chunks := 8 + rand.IntN(9)
	gap := between(time.Second, 3*time.Second) / time.Duration(chunks)
	h := w.Header()
	h.Set("Content-Type", "text/csv")
	h.Set(headerKind, kindExport.String())
	h.Set(headerBytes, strconv.Itoa(total))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	sent := 0
	for i := range chunks {
		n := total / chunks
		if i == chunks-1 {
			n = total - sent
		}
		if _, err := w.Write(u.payload[sent : sent+n]); err != nil {
			return
		}
		sent += n
		if err := rc.Flush(); err != nil {
			return
		}
		if i < chunks-1 && !sleep(r.Context(), gap) {
			return
		}
	}
}

// static is a file: 0-5 ms, 4-128 KiB.
func (u *upstream) static(w http.ResponseWriter, r *http.Request) {
	u.arrive(kindStatic, r)
	if !sleep(r.Context(), rand.N(5*time.Millisecond)) {
		return
	}
	u.reply(w, kindStatic, "text/javascript", 4<<10+rand.IntN(124<<10))
}
