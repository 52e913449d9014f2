package session

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jonboulle/clockwork"
)

// memShards spreads the memory store over independent locks so that
// concurrent requests of different sessions rarely wait on each other.
const memShards = 64

// Memory is an in-process Store for a single lanegate: bounded, least
// recently used entries evicted first, each entry expiring on its own.
type Memory struct {
	clock  clockwork.Clock
	shards [memShards]memShard
	closed atomic.Bool
}

type memShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[Key, memEntry]
	_   [40]byte // keep shards' locks off each other's cache lines
}

type memEntry struct {
	e         Entry
	deadline  time.Time
	tombstone bool
}

// NewMemory returns a memory store holding about maxEntries entries and
// tombstones: each of its 64 shards holds maxEntries/64 (rounded up), and a
// full shard forgets its least recently used entry. clock may be nil for
// the real clock.
func NewMemory(maxEntries int, clock clockwork.Clock) (*Memory, error) {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	per := max(1, (maxEntries+memShards-1)/memShards)
	m := &Memory{clock: clock}
	for i := range m.shards {
		lru, err := simplelru.NewLRU[Key, memEntry](per, nil)
		if err != nil {
			return nil, err
		}
		m.shards[i].lru = lru
	}
	return m, nil
}

func (m *Memory) shard(k Key) *memShard { return &m.shards[k[0]%memShards] }

// Get implements Store.
func (m *Memory) Get(_ context.Context, k Key) (Entry, bool, error) {
	if m.closed.Load() {
		return Entry{}, false, ErrClosed
	}
	now := m.clock.Now()
	s := m.shard(k)
	s.mu.Lock()
	me, ok := s.lru.Get(k)
	if ok && !now.Before(me.deadline) {
		s.lru.Remove(k)
		ok = false
	}
	s.mu.Unlock()
	if !ok || me.tombstone {
		return Entry{}, false, nil
	}
	return me.e, true, nil
}

// Put implements Store.
func (m *Memory) Put(_ context.Context, k Key, e Entry, ttl time.Duration) (bool, error) {
	if m.closed.Load() {
		return false, ErrClosed
	}
	if ttl <= 0 {
		return false, nil
	}
	now := m.clock.Now()
	s := m.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.lru.Peek(k); ok && old.tombstone && now.Before(old.deadline) {
		return false, nil
	}
	s.lru.Add(k, memEntry{e: e, deadline: now.Add(ttl)})
	return true, nil
}

// Revoke implements Store.
func (m *Memory) Revoke(_ context.Context, k Key, tombstone time.Duration) error {
	if m.closed.Load() {
		return ErrClosed
	}
	now := m.clock.Now()
	s := m.shard(k)
	s.mu.Lock()
	if tombstone > 0 {
		s.lru.Add(k, memEntry{deadline: now.Add(tombstone), tombstone: true})
	} else {
		s.lru.Remove(k)
	}
	s.mu.Unlock()
	return nil
}

// Len implements Store. Expired entries not yet touched are counted until
// they are evicted or read.
func (m *Memory) Len(context.Context) (int, error) {
	if m.closed.Load() {
		return 0, ErrClosed
	}
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n, nil
}

// Close empties the store; later calls fail with ErrClosed.
func (m *Memory) Close() error {
	m.closed.Store(true)
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		s.lru.Purge()
		s.mu.Unlock()
	}
	return nil
}
