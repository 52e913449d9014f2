package session

import (
	"context"
	"encoding/binary"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// shardKey is a key in memory shard shard (k[0] % memShards), distinct for
// every n.
func shardKey(shard byte, n uint32) Key {
	var k Key
	k[0] = shard
	binary.BigEndian.PutUint32(k[1:], n)
	return k
}

func newTestMemory(t testing.TB, maxEntries int) (*Memory, *clockwork.FakeClock) {
	t.Helper()
	clock := clockwork.NewFakeClock()
	m, err := NewMemory(maxEntries, clock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m, clock
}

// TestMemoryEvictsLeastRecentlyUsed fills one shard past its share of the
// bound: the entry read least recently goes first.
func TestMemoryEvictsLeastRecentlyUsed(t *testing.T) {
	m, _ := newTestMemory(t, 2*memShards) // 2 per shard
	a, b, c := shardKey(0, 1), shardKey(0, 2), shardKey(0, 3)
	ea, eb, ec := testEntry("a"), testEntry("b"), testEntry("c")
	mustPut(t, m, a, ea, time.Hour)
	mustPut(t, m, b, eb, time.Hour)
	wantEntry(t, m, a, ea) // a is now more recent than b
	mustPut(t, m, c, ec, time.Hour)
	wantMiss(t, m, b)
	wantEntry(t, m, a, ea)
	wantEntry(t, m, c, ec)
	if n := mustLen(t, m); n != 2 {
		t.Fatalf("Len: %d, want 2", n)
	}
}

// TestMemoryBound puts far more entries than the bound: the store holds
// exactly the bound once every shard is full, never more.
func TestMemoryBound(t *testing.T) {
	const maxEntries = 4 * memShards
	m, _ := newTestMemory(t, maxEntries)
	for i := range uint32(10 * maxEntries) {
		mustPut(t, m, shardKey(byte(i%memShards), i), testEntry("1"), time.Hour)
		if i%memShards == 0 {
			if n := mustLen(t, m); n > maxEntries {
				t.Fatalf("Len after %d puts: %d, want at most %d", i+1, n, maxEntries)
			}
		}
	}
	if n := mustLen(t, m); n != maxEntries {
		t.Fatalf("Len: %d, want %d", n, maxEntries)
	}
	// Tombstones count toward the bound too.
	for i := range uint32(2 * maxEntries) {
		mustRevoke(t, m, shardKey(byte(i%memShards), 1<<20+i), time.Hour)
	}
	if n := mustLen(t, m); n != maxEntries {
		t.Fatalf("Len after tombstones: %d, want %d", n, maxEntries)
	}
}

// TestMemoryShardsIndependent checks that a burst of sessions in one shard
// evicts nothing from the others.
func TestMemoryShardsIndependent(t *testing.T) {
	m, _ := newTestMemory(t, memShards) // 1 per shard
	keep := make([]Key, memShards)
	for s := range keep {
		keep[s] = shardKey(byte(s), 0)
		mustPut(t, m, keep[s], testEntry("keep"), time.Hour)
	}
	for i := range uint32(100) {
		mustPut(t, m, shardKey(0, i+1), testEntry("burst"), time.Hour)
	}
	wantMiss(t, m, keep[0])
	for s := 1; s < memShards; s++ {
		wantEntry(t, m, keep[s], testEntry("keep"))
	}
	// Keys spread over shards by their first byte, which is uniform for
	// HMAC output: keys equal but for it land in different shards.
	if m.shard(shardKey(1, 0)) == m.shard(shardKey(2, 0)) || m.shard(shardKey(1, 0)) != m.shard(shardKey(1+memShards, 0)) {
		t.Fatal("shard is not k[0] % memShards")
	}
}

// TestMemoryExpiredEntriesLeave checks that an expired entry is dropped on
// read (and so stops counting), and that a tombstone past its period no
// longer blocks.
func TestMemoryExpiredEntriesLeave(t *testing.T) {
	m, clock := newTestMemory(t, 1024)
	k := testKey("expired")
	mustPut(t, m, k, testEntry("1"), time.Minute)
	clock.Advance(time.Minute)
	if n := mustLen(t, m); n != 1 {
		t.Fatalf("Len before the expired entry is read: %d, want 1", n)
	}
	wantMiss(t, m, k)
	if n := mustLen(t, m); n != 0 {
		t.Fatalf("Len after the expired entry was read: %d, want 0", n)
	}
}

func BenchmarkMemoryGet(b *testing.B) {
	m, _ := newTestMemory(b, 1<<16)
	k := testKey("bench")
	if _, err := m.Put(context.Background(), k, testEntry("42"), time.Hour); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := m.Get(ctx, k); err != nil || !ok {
			b.Fatalf("Get: %v %v", ok, err)
		}
	}
}

// BenchmarkMemoryGetParallel reads keys spread over all shards, as
// concurrent requests of different sessions do.
func BenchmarkMemoryGetParallel(b *testing.B) {
	m, _ := newTestMemory(b, 1<<16)
	keys := make([]Key, 1024)
	for i := range keys {
		keys[i] = shardKey(byte(i), uint32(i))
		if _, err := m.Put(context.Background(), keys[i], testEntry("42"), time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok, err := m.Get(ctx, keys[i%len(keys)]); err != nil || !ok {
				b.Errorf("Get: %v %v", ok, err)
				return
			}
			i++
		}
	})
}

// BenchmarkMemoryFootprint measures the heap one cached session costs in
// the memory store, filled with 1,000,000 sessions: run with
// -bench MemoryFootprint -benchtime 1x.
func BenchmarkMemoryFootprint(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		m, err := NewMemory(n, nil)
		if err != nil {
			b.Fatal(err)
		}
		e := Entry{UserID: "1234567", AuthHash: strings.Repeat("ab", 32), Expires: time.Now().Add(time.Hour), Granted: time.Now()}
		var k Key
		for i := range n {
			binary.LittleEndian.PutUint64(k[:], uint64(i)*0x9e3779b97f4a7c15)
			e.UserID = strconv.Itoa(i) // a string of its own, as grants make
			m.Put(context.Background(), k, e, time.Hour)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		got, _ := m.Len(context.Background())
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(got), "B/session")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB")
		runtime.KeepAlive(m)
	}
}
