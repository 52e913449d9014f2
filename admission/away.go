package admission

import "time"

// awaySet holds the places kept for logins that are away. The controller
// asks it, under its one mutex, how many places rank ahead of a login on
// every login that waits, is sent away or opens the waiting page, and the
// set may hold tens of thousands of places during a storm; so every
// operation costs O(log n), through three indexes of the same nodes:
//
//   - a treap ordered by first arrival (ties by ID), each node counting
//     its subtree, which answers "how many arrived no later than t" by
//     one walk from the root;
//   - a binary min-heap by lapse time, from which purge takes the places
//     whose time is up;
//   - a map by ID, for a place's return or renewal.
//
// It also counts each client's waiting-page places, which are capped (see
// MaxPagePlacesPerClient).
type awaySet struct {
	root  *awayNode
	byID  map[uint64]*awayNode
	lapse []*awayNode // min-heap by until
	pages map[string]int
}

// awayNode is one place in the set.
type awayNode struct {
	id      uint64
	arrival time.Time
	until   time.Time
	client  string
	page    bool // made by the waiting page, so capped per client

	prio        uint64 // treap priority, from the ID
	size        int    // nodes in this subtree
	left, right *awayNode
	heapAt      int // index in lapse
}

func newAwaySet() awaySet {
	return awaySet{byID: map[uint64]*awayNode{}, pages: map[string]int{}}
}

func (s *awaySet) len() int { return len(s.byID) }

func (s *awaySet) get(id uint64) *awayNode { return s.byID[id] }

// pagesOf is how many waiting-page places client has in the set.
func (s *awaySet) pagesOf(client string) int { return s.pages[client] }

// add puts a place in the set; its ID must not be there already.
func (s *awaySet) add(id uint64, arrival, until time.Time, client string, page bool) {
	n := &awayNode{id: id, arrival: arrival, until: until, client: client, page: page, prio: mix64(id), size: 1}
	s.byID[id] = n
	s.root = treapInsert(s.root, n)
	n.heapAt = len(s.lapse)
	s.lapse = append(s.lapse, n)
	s.up(n.heapAt)
	if page {
		s.pages[client]++
	}
}

// remove takes n out of the set.
func (s *awaySet) remove(n *awayNode) {
	delete(s.byID, n.id)
	s.root = treapDelete(s.root, n)
	last := len(s.lapse) - 1
	i := n.heapAt
	s.swap(i, last)
	s.lapse[last] = nil
	s.lapse = s.lapse[:last]
	s.fix(i)
	if n.page {
		if s.pages[n.client]--; s.pages[n.client] <= 0 {
			delete(s.pages, n.client)
		}
	}
	n.left, n.right = nil, nil
}

// renew moves n's lapse time to until.
func (s *awaySet) renew(n *awayNode, until time.Time) {
	n.until = until
	s.fix(n.heapAt)
}

// purge removes every place whose time is up at now.
func (s *awaySet) purge(now time.Time) {
	for len(s.lapse) > 0 && !now.Before(s.lapse[0].until) {
		s.remove(s.lapse[0])
	}
}

// ahead counts places of logins that arrived no later than arrival,
// other than id's own.
func (s *awaySet) ahead(arrival time.Time, id uint64) int {
	n := 0
	for x := s.root; x != nil; {
		if x.arrival.After(arrival) {
			x = x.left
			continue
		}
		n += x.left.sizeOf() + 1
		x = x.right
	}
	if own := s.byID[id]; own != nil && !own.arrival.After(arrival) {
		n--
	}
	return n
}

// The heap, by until.

func (s *awaySet) less(i, j int) bool { return s.lapse[i].until.Before(s.lapse[j].until) }

func (s *awaySet) swap(i, j int) {
	s.lapse[i], s.lapse[j] = s.lapse[j], s.lapse[i]
	s.lapse[i].heapAt, s.lapse[j].heapAt = i, j
}

func (s *awaySet) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			return
		}
		s.swap(i, p)
		i = p
	}
}

func (s *awaySet) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(s.lapse) {
			return
		}
		m := l
		if r := l + 1; r < len(s.lapse) && s.less(r, l) {
			m = r
		}
		if !s.less(m, i) {
			return
		}
		s.swap(i, m)
		i = m
	}
}

// fix restores the heap after the node at i changed or moved there.
func (s *awaySet) fix(i int) {
	if i >= len(s.lapse) {
		return
	}
	s.up(i)
	s.down(i)
}

// The treap, by (arrival, id).

func (n *awayNode) sizeOf() int {
	if n == nil {
		return 0
	}
	return n.size
}

func (n *awayNode) resize() { n.size = n.left.sizeOf() + n.right.sizeOf() + 1 }

// before orders places by first arrival, then by ID.
func (n *awayNode) before(m *awayNode) bool {
	if c := n.arrival.Compare(m.arrival); c != 0 {
		return c < 0
	}
	return n.id < m.id
}

// treapInsert inserts n under t and returns the new root.
func treapInsert(t, n *awayNode) *awayNode {
	if t == nil {
		return n
	}
	if n.prio > t.prio {
		n.left, n.right = treapSplit(t, n)
		n.resize()
		return n
	}
	if n.before(t) {
		t.left = treapInsert(t.left, n)
	} else {
		t.right = treapInsert(t.right, n)
	}
	t.resize()
	return t
}

// treapSplit splits t into the nodes ordered before n and the rest.
func treapSplit(t, n *awayNode) (l, r *awayNode) {
	if t == nil {
		return nil, nil
	}
	if t.before(n) {
		t.right, r = treapSplit(t.right, n)
		t.resize()
		return t, r
	}
	l, t.left = treapSplit(t.left, n)
	t.resize()
	return l, t
}

// treapDelete removes n, which is in t, and returns the new root.
func treapDelete(t, n *awayNode) *awayNode {
	if t == n {
		return treapMerge(t.left, t.right)
	}
	if n.before(t) {
		t.left = treapDelete(t.left, n)
	} else {
		t.right = treapDelete(t.right, n)
	}
	t.resize()
	return t
}

// treapMerge joins l and r, every node of l ordered before r's.
func treapMerge(l, r *awayNode) *awayNode {
	switch {
	case l == nil:
		return r
	case r == nil:
		return l
	case l.prio > r.prio:
		l.right = treapMerge(l.right, r)
		l.resize()
		return l
	default:
		r.left = treapMerge(l, r.left)
		r.resize()
		return r
	}
}

// mix64 scrambles an ID into a treap priority (SplitMix64's finaliser), so
// the tree stays balanced whatever IDs it is given.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}
