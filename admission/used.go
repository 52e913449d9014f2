package admission

import "time"

// usedSet remembers the tickets that were used up, each until no ticket
// for its place can rank anyone (see Controller.redeem), and forgets them
// in order of that time through a min-heap, so that neither remembering
// nor forgetting one walks the others.
type usedSet struct {
	until map[uint64]time.Time
	heap  []usedRecord
}

type usedRecord struct {
	id    uint64
	until time.Time
}

func newUsedSet() usedSet { return usedSet{until: map[uint64]time.Time{}} }

func (u *usedSet) has(id uint64) bool {
	_, ok := u.until[id]
	return ok
}

func (u *usedSet) len() int { return len(u.until) }

// add remembers id as used until until.
func (u *usedSet) add(id uint64, until time.Time) {
	u.until[id] = until
	u.heap = append(u.heap, usedRecord{id, until})
	for i := len(u.heap) - 1; i > 0; {
		p := (i - 1) / 2
		if !u.heap[i].until.Before(u.heap[p].until) {
			break
		}
		u.heap[i], u.heap[p] = u.heap[p], u.heap[i]
		i = p
	}
}

// purge forgets every record whose time is up at now.
func (u *usedSet) purge(now time.Time) {
	for len(u.heap) > 0 && !now.Before(u.heap[0].until) {
		r := u.heap[0]
		if t, ok := u.until[r.id]; ok && t.Equal(r.until) {
			delete(u.until, r.id)
		}
		last := len(u.heap) - 1
		u.heap[0] = u.heap[last]
		u.heap = u.heap[:last]
		for i := 0; ; {
			l := 2*i + 1
			if l >= len(u.heap) {
				break
			}
			m := l
			if r := l + 1; r < len(u.heap) && u.heap[r].until.Before(u.heap[l].until) {
				m = r
			}
			if !u.heap[m].until.Before(u.heap[i].until) {
				break
			}
			u.heap[i], u.heap[m] = u.heap[m], u.heap[i]
			i = m
		}
	}
}
