package session

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// storeHarness gives the conformance suite stores of one implementation.
type storeHarness struct {
	// open returns a fresh, empty store, closed when t ends, and advance,
	// which makes d pass for the store's TTLs (and only for them: entries'
	// own Expires are left far in the future by the suite).
	open func(t *testing.T) (s Store, advance func(d time.Duration))
}

// TestMemoryConformance runs the Store suite on the memory store, its time
// driven by a fake clock.
func TestMemoryConformance(t *testing.T) {
	testStore(t, storeHarness{open: func(t *testing.T) (Store, func(time.Duration)) {
		clock := clockwork.NewFakeClock()
		m, err := NewMemory(1<<14, clock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		return m, clock.Advance
	}})
}

// TestRedisConformance runs the Store suite on the Redis store, one private
// redis-server per case. Redis's clock cannot be faked, so advance shortens
// every key's TTL instead.
func TestRedisConformance(t *testing.T) {
	testStore(t, storeHarness{open: func(t *testing.T) (Store, func(time.Duration)) {
		srv := startRedis(t)
		// A generous timeout: these cases test semantics, not latency,
		// and must not flake on a loaded machine under -race.
		r := newTestRedis(t, RedisOptions{URL: srv.URL(), Timeout: 5 * time.Second})
		admin := newAdmin(t, srv)
		return r, func(d time.Duration) { shortenTTLs(t, admin, DefaultRedisKeyPrefix, d) }
	}})
}

// testKey is a store key derived from name.
func testKey(name string) Key { return Key(sha256.Sum256([]byte(name))) }

// farFuture is an Expires no test reaches, so that only TTLs decide.
var farFuture = time.Unix(4102444800, 0) // 2100-01-01

func testEntry(uid string) Entry {
	return Entry{
		UserID:   uid,
		AuthHash: "ah:" + uid,
		Expires:  farFuture,
		Granted:  time.Unix(1767225600, 123456789),
	}
}

func sameEntry(a, b Entry) bool {
	return a.UserID == b.UserID && a.AuthHash == b.AuthHash &&
		a.Expires.Equal(b.Expires) && a.Granted.Equal(b.Granted)
}

// oddUserIDs are user ids that break naive encodings.
var oddUserIDs = []string{
	"42",
	"",
	"-", // the Redis tombstone's value
	"a|b|c",
	`"quoted" 'single' \back\slash`,
	"ünïcødé 用户 🎉",
	"nul\x00byte and \xff invalid utf-8",
	"new\nline\r\ttab",
	strings.Repeat("long|", 2000),
}

// mustGet fetches k and fails the test on an error.
func mustGet(t *testing.T, s Store, k Key) (Entry, bool) {
	t.Helper()
	e, ok, err := s.Get(context.Background(), k)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return e, ok
}

func mustPut(t *testing.T, s Store, k Key, e Entry, ttl time.Duration) bool {
	t.Helper()
	stored, err := s.Put(context.Background(), k, e, ttl)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return stored
}

func mustRevoke(t *testing.T, s Store, k Key, tombstone time.Duration) {
	t.Helper()
	if err := s.Revoke(context.Background(), k, tombstone); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
}

func mustLen(t *testing.T, s Store) int {
	t.Helper()
	n, err := s.Len(context.Background())
	if err != nil {
		t.Fatalf("Len: %v", err)
	}
	return n
}

func wantEntry(t *testing.T, s Store, k Key, want Entry) {
	t.Helper()
	got, ok := mustGet(t, s, k)
	if !ok {
		t.Fatalf("Get: miss, want %+v", want)
	}
	if !sameEntry(got, want) {
		t.Fatalf("Get: %+v, want %+v", got, want)
	}
}

func wantMiss(t *testing.T, s Store, k Key) {
	t.Helper()
	if got, ok := mustGet(t, s, k); ok {
		t.Fatalf("Get: %+v, want a miss", got)
	}
}

// testStore is the behaviour every Store shares. Entry.Expires is left out:
// the memory store does not check it (callers bound the TTL by it), while
// the Redis store also refuses an entry past it (see redis_test.go).
func testStore(t *testing.T, h storeHarness) {
	const hour = time.Hour

	t.Run("GetMissing", func(t *testing.T) {
		s, _ := h.open(t)
		wantMiss(t, s, testKey("missing"))
	})

	t.Run("RoundTrip", func(t *testing.T) {
		s, _ := h.open(t)
		for i, uid := range oddUserIDs {
			k := testKey(fmt.Sprint("round-trip-", i))
			e := Entry{
				UserID:   uid,
				AuthHash: "pbkdf2|" + uid,
				Expires:  farFuture.Add(time.Duration(i) * time.Second),
				Granted:  time.Unix(1767225600+int64(i), int64(i)*1000+7),
			}
			if !mustPut(t, s, k, e, hour) {
				t.Fatalf("Put %q: not stored", uid)
			}
			wantEntry(t, s, k, e)
		}
	})

	t.Run("ZeroTimes", func(t *testing.T) {
		s, _ := h.open(t)
		k := testKey("zero")
		e := Entry{UserID: "7"}
		mustPut(t, s, k, e, hour)
		got, ok := mustGet(t, s, k)
		if !ok || !sameEntry(got, e) || !got.Expires.IsZero() || !got.Granted.IsZero() {
			t.Fatalf("Get: %+v %v, want %+v with zero times", got, ok, e)
		}
	})

	t.Run("TTLExpiry", func(t *testing.T) {
		s, advance := h.open(t)
		k := testKey("ttl")
		e := testEntry("1")
		const ttl = 10 * time.Minute
		mustPut(t, s, k, e, ttl)
		// A margin of seconds before the deadline: Redis's own clock runs
		// on while the test does.
		advance(ttl - 5*time.Second)
		wantEntry(t, s, k, e)
		advance(5 * time.Second)
		wantMiss(t, s, k)
	})

	t.Run("NonPositiveTTLStoresNothing", func(t *testing.T) {
		s, _ := h.open(t)
		k := testKey("no-ttl")
		for _, ttl := range []time.Duration{0, -time.Second} {
			if mustPut(t, s, k, testEntry("1"), ttl) {
				t.Fatalf("Put ttl %s: stored", ttl)
			}
			wantMiss(t, s, k)
		}
		// Nor does it touch what is there.
		old := testEntry("old")
		mustPut(t, s, k, old, hour)
		if mustPut(t, s, k, testEntry("new"), 0) {
			t.Fatal("Put ttl 0 over an entry: stored")
		}
		wantEntry(t, s, k, old)
	})

	t.Run("Overwrite", func(t *testing.T) {
		s, advance := h.open(t)
		k := testKey("overwrite")
		mustPut(t, s, k, testEntry("first"), time.Minute)
		advance(40 * time.Second)
		second := testEntry("second")
		if !mustPut(t, s, k, second, time.Minute) {
			t.Fatal("overwrite: not stored")
		}
		wantEntry(t, s, k, second)
		// The overwrite's TTL counts from the overwrite.
		advance(40 * time.Second)
		wantEntry(t, s, k, second)
		advance(20 * time.Second)
		wantMiss(t, s, k)
	})

	t.Run("RevokeRemoves", func(t *testing.T) {
		s, _ := h.open(t)
		k := testKey("revoke")
		mustPut(t, s, k, testEntry("1"), hour)
		mustRevoke(t, s, k, time.Minute)
		wantMiss(t, s, k)
	})

	t.Run("TombstoneBlocksPut", func(t *testing.T) {
		s, advance := h.open(t)
		k := testKey("tombstone")
		mustPut(t, s, k, testEntry("before logout"), hour)
		const tomb = 10 * time.Minute
		mustRevoke(t, s, k, tomb)
		if mustPut(t, s, k, testEntry("stale grant"), hour) {
			t.Fatal("Put right after Revoke: stored")
		}
		wantMiss(t, s, k)
		advance(tomb - 5*time.Second)
		if mustPut(t, s, k, testEntry("stale grant"), hour) {
			t.Fatal("Put before the tombstone ends: stored")
		}
		wantMiss(t, s, k)
		advance(5 * time.Second)
		after := testEntry("new login")
		if !mustPut(t, s, k, after, hour) {
			t.Fatal("Put after the tombstone ended: not stored")
		}
		wantEntry(t, s, k, after)
	})

	t.Run("RevokeMissingLeavesTombstone", func(t *testing.T) {
		s, _ := h.open(t)
		k := testKey("revoke-missing")
		mustRevoke(t, s, k, time.Minute)
		if mustPut(t, s, k, testEntry("1"), hour) {
			t.Fatal("Put after Revoke of a missing key: stored")
		}
	})

	t.Run("RevokeWithoutTombstone", func(t *testing.T) {
		s, _ := h.open(t)
		k := testKey("revoke-no-tombstone")
		mustPut(t, s, k, testEntry("1"), hour)
		mustRevoke(t, s, k, 0)
		wantMiss(t, s, k)
		e := testEntry("2")
		if !mustPut(t, s, k, e, hour) {
			t.Fatal("Put after Revoke without tombstone: not stored")
		}
		wantEntry(t, s, k, e)

		// Revoking without a tombstone also lifts an earlier tombstone.
		mustRevoke(t, s, k, hour)
		mustRevoke(t, s, k, 0)
		if !mustPut(t, s, k, e, hour) {
			t.Fatal("Put after tombstone then Revoke(0): not stored")
		}
	})

	t.Run("KeysIndependent", func(t *testing.T) {
		s, advance := h.open(t)
		a, b, c := testKey("a"), testKey("b"), testKey("c")
		ea, eb, ec := testEntry("a"), testEntry("b"), testEntry("c")
		mustPut(t, s, a, ea, time.Minute)
		mustPut(t, s, b, eb, hour)
		mustPut(t, s, c, ec, hour)
		mustRevoke(t, s, c, hour)
		wantEntry(t, s, a, ea)
		wantEntry(t, s, b, eb)
		wantMiss(t, s, c)
		advance(time.Minute)
		wantMiss(t, s, a)
		wantEntry(t, s, b, eb)
		if !mustPut(t, s, a, ea, hour) {
			t.Fatal("Put beside a tombstone of another key: not stored")
		}
	})

	t.Run("Len", func(t *testing.T) {
		s, _ := h.open(t)
		if n := mustLen(t, s); n != 0 {
			t.Fatalf("Len of an empty store: %d", n)
		}
		for i := range 3 {
			mustPut(t, s, testKey(fmt.Sprint("len-", i)), testEntry("1"), hour)
		}
		if n := mustLen(t, s); n != 3 {
			t.Fatalf("Len after 3 puts: %d", n)
		}
		mustRevoke(t, s, testKey("len-0"), hour) // entry becomes tombstone
		mustRevoke(t, s, testKey("len-9"), hour) // tombstone of a missing key
		if n := mustLen(t, s); n != 4 {
			t.Fatalf("Len with 2 entries and 2 tombstones: %d", n)
		}
		mustRevoke(t, s, testKey("len-1"), 0)
		if n := mustLen(t, s); n != 3 {
			t.Fatalf("Len after a Revoke without tombstone: %d", n)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		s, _ := h.open(t)
		testConcurrent(t, s)
	})

	t.Run("Close", func(t *testing.T) {
		s, _ := h.open(t)
		k := testKey("close")
		mustPut(t, s, k, testEntry("1"), hour)
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		ctx := context.Background()
		if _, ok, err := s.Get(ctx, k); !errors.Is(err, ErrClosed) || ok {
			t.Errorf("Get after Close: ok %v, err %v; want ErrClosed", ok, err)
		}
		if stored, err := s.Put(ctx, k, testEntry("1"), hour); !errors.Is(err, ErrClosed) || stored {
			t.Errorf("Put after Close: stored %v, err %v; want ErrClosed", stored, err)
		}
		if err := s.Revoke(ctx, k, hour); !errors.Is(err, ErrClosed) {
			t.Errorf("Revoke after Close: %v; want ErrClosed", err)
		}
		// Len is left out: the memory store answers 0 after Close.
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// testConcurrent runs Put, Get and Revoke from many goroutines: each on
// keys of its own, whose final state it knows, and on keys all share,
// whose every read must be an entry someone wrote, whole.
func testConcurrent(t *testing.T, s Store) {
	const (
		workers = 16
		rounds  = 150
		own     = 4 // keys per worker
		shared  = 8
		hour    = time.Hour
	)
	ctx := context.Background()
	ownKey := func(w, j int) Key { return testKey(fmt.Sprintf("own-%d-%d", w, j)) }
	sharedKey := func(j int) Key { return testKey(fmt.Sprint("shared-", j)) }
	// A shared entry is whole when its AuthHash matches its UserID.
	sharedEntry := func(w, i int) Entry { return testEntry(fmt.Sprintf("shared-%d-%d", w, i)) }

	var wg sync.WaitGroup
	last := make([][own]Entry, workers) // last[w][j]: worker w's final write to its key j
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				k, e := ownKey(w, i%own), testEntry(fmt.Sprintf("own-%d-%d", w, i))
				if stored, err := s.Put(ctx, k, e, hour); err != nil || !stored {
					t.Errorf("worker %d: Put own key: stored %v, err %v", w, stored, err)
					return
				}
				if got, ok, err := s.Get(ctx, k); err != nil || !ok || !sameEntry(got, e) {
					t.Errorf("worker %d: Get own key: %+v %v %v, want %+v", w, got, ok, err, e)
					return
				}
				last[w][i%own] = e

				sk := sharedKey((w + i) % shared)
				var err error
				switch (w*7 + i) % 4 {
				case 0, 1:
					_, err = s.Put(ctx, sk, sharedEntry(w, i), hour)
				case 2:
					var got Entry
					var ok bool
					got, ok, err = s.Get(ctx, sk)
					if err == nil && ok && (!strings.HasPrefix(got.UserID, "shared-") || got.AuthHash != "ah:"+got.UserID) {
						t.Errorf("worker %d: Get shared key: torn or foreign entry %+v", w, got)
					}
				case 3:
					tomb := time.Duration(0)
					if i%2 == 0 {
						tomb = hour
					}
					err = s.Revoke(ctx, sk, tomb)
				}
				if err != nil {
					t.Errorf("worker %d: shared key: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	for w := range workers {
		for j := range own {
			wantEntry(t, s, ownKey(w, j), last[w][j])
		}
	}
	for j := range shared {
		k := sharedKey(j)
		if got, ok := mustGet(t, s, k); ok && got.AuthHash != "ah:"+got.UserID {
			t.Fatalf("shared key %d: torn entry %+v", j, got)
		}
		// Whatever raced, a Revoke without tombstone then a Put wins.
		mustRevoke(t, s, k, 0)
		e := sharedEntry(-1, j)
		if !mustPut(t, s, k, e, hour) {
			t.Fatalf("shared key %d: final Put not stored", j)
		}
		wantEntry(t, s, k, e)
	}
	if n, want := mustLen(t, s), workers*own+shared; n != want {
		t.Fatalf("Len: %d, want %d", n, want)
	}
}
