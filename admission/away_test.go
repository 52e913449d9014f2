package admission

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// modelPlace is a place in the plain model the set is checked against.
type modelPlace struct {
	arrival, until time.Time
	client         string
	page           bool
}

// checkAway compares the set with the model and checks its own
// invariants: the treap's order and sizes, the heap's order and indexes.
func checkAway(t *testing.T, s *awaySet, model map[uint64]modelPlace) {
	t.Helper()
	if s.len() != len(model) {
		t.Fatalf("len %d, model %d", s.len(), len(model))
	}
	var walk func(n *awayNode, lo, hi *awayNode) int
	walk = func(n *awayNode, lo, hi *awayNode) int {
		if n == nil {
			return 0
		}
		if lo != nil && !lo.before(n) || hi != nil && !n.before(hi) {
			t.Fatalf("treap out of order at %x", n.id)
		}
		for _, c := range []*awayNode{n.left, n.right} {
			if c != nil && c.prio > n.prio {
				t.Fatalf("treap priority broken at %x", n.id)
			}
		}
		size := walk(n.left, lo, n) + walk(n.right, n, hi) + 1
		if size != n.size {
			t.Fatalf("size of %x: %d, counted %d", n.id, n.size, size)
		}
		return size
	}
	if n := walk(s.root, nil, nil); n != len(model) {
		t.Fatalf("treap holds %d, model %d", n, len(model))
	}
	for i, n := range s.lapse {
		if n.heapAt != i {
			t.Fatalf("heap index of %x: %d, at %d", n.id, n.heapAt, i)
		}
		if i > 0 && n.until.Before(s.lapse[(i-1)/2].until) {
			t.Fatalf("heap out of order at %d", i)
		}
	}
	pages := map[string]int{}
	for id, p := range model {
		n := s.get(id)
		if n == nil || !n.arrival.Equal(p.arrival) || !n.until.Equal(p.until) || n.client != p.client || n.page != p.page {
			t.Fatalf("place %x: %+v, model %+v", id, n, p)
		}
		if p.page {
			pages[p.client]++
		}
	}
	for c, k := range pages {
		if s.pagesOf(c) != k {
			t.Fatalf("pages of %q: %d, model %d", c, s.pagesOf(c), k)
		}
	}
	if len(s.pages) != len(pages) {
		t.Fatalf("page counts kept for %d clients, model %d", len(s.pages), len(pages))
	}
}

// The set agrees with a plain model through random adds, removals,
// renewals, purges and rank queries.
func TestAwaySetMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := newAwaySet()
	model := map[uint64]modelPlace{}
	epoch := time.Unix(1_700_000_000, 0)
	now := epoch
	at := func(ms int) time.Time { return epoch.Add(time.Duration(ms) * time.Millisecond) }
	anyID := func() uint64 {
		for id := range model {
			return id
		}
		return 0
	}
	for step := range 20_000 {
		switch op := rng.IntN(10); {
		case op < 4:
			id := rng.Uint64() | 1
			if _, dup := model[id]; dup {
				continue
			}
			// Few distinct arrivals, so ties are common.
			p := modelPlace{arrival: at(rng.IntN(200)), until: now.Add(time.Duration(1+rng.IntN(500)) * time.Millisecond),
				client: strconv.Itoa(rng.IntN(5)), page: rng.IntN(2) == 0}
			s.add(id, p.arrival, p.until, p.client, p.page)
			model[id] = p
		case op < 6:
			if id := anyID(); id != 0 {
				s.remove(s.get(id))
				delete(model, id)
			}
		case op < 7:
			if id := anyID(); id != 0 {
				p := model[id]
				p.until = now.Add(time.Duration(rng.IntN(500)) * time.Millisecond)
				s.renew(s.get(id), p.until)
				model[id] = p
			}
		case op < 8:
			now = now.Add(time.Duration(rng.IntN(50)) * time.Millisecond)
			s.purge(now)
			for id, p := range model {
				if !now.Before(p.until) {
					delete(model, id)
				}
			}
		default:
			q, own := at(rng.IntN(220)), anyID()
			if rng.IntN(2) == 0 {
				own = rng.Uint64()
			}
			want := 0
			for id, p := range model {
				if id != own && !p.arrival.After(q) {
					want++
				}
			}
			if got := s.ahead(q, own); got != want {
				t.Fatalf("step %d: ahead(%s, %x) = %d, want %d", step, q.Sub(epoch), own, got, want)
			}
		}
		if step%97 == 0 {
			checkAway(t, &s, model)
		}
	}
	checkAway(t, &s, model)
}
