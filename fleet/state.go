package fleet

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// entryFormat starts every member's value; lease.lua refuses any other, so
// that a lanegate never counts a value it cannot read as free capacity.
const entryFormat = 2

// entryFields is how many integers a member's value holds: format,
// expires, renewed, then granted, reserved, in flight and queued per lane,
// then its login completions and arrivals per 1000 s.
const entryFields = 3 + 4*lanes + 2

// entry is one member's value in the fleet's hash, as lease.lua writes it.
type entry struct {
	id                string
	expires, renewed  int64 // ms, on the script's clock
	granted, reserved [lanes]int
	inflight, queued  [lanes]int
	done, arrived     int64 // per 1000 s
}

// state is the fleet's hash as read at one moment.
type state struct {
	now     int64 // ms, on the script's clock
	epoch   int64 // ms; 0 when there is none
	entries []entry
}

// parseState reads readLua's answer: now, then the hash's fields and values.
// Entries are ordered by id.
func parseState(res []any) (state, error) {
	if len(res) == 0 || len(res)%2 != 1 {
		return state{}, fmt.Errorf("read returned %d values", len(res))
	}
	now, ok := res[0].(int64)
	if !ok {
		return state{}, fmt.Errorf("read returned now %T", res[0])
	}
	st := state{now: now}
	for k := 1; k < len(res); k += 2 {
		f, ok1 := res[k].(string)
		v, ok2 := res[k+1].(string)
		if !ok1 || !ok2 {
			return state{}, fmt.Errorf("read returned field %T, value %T", res[k], res[k+1])
		}
		if f == "epoch" {
			e, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return state{}, fmt.Errorf("epoch %q: %w", v, err)
			}
			st.epoch = e
			continue
		}
		id, ok := strings.CutPrefix(f, memberPrefix)
		if !ok {
			return state{}, fmt.Errorf("unknown field %q", f)
		}
		e, err := decodeEntry(id, v)
		if err != nil {
			return state{}, err
		}
		st.entries = append(st.entries, e)
	}
	sort.Slice(st.entries, func(i, j int) bool { return st.entries[i].id < st.entries[j].id })
	return st, nil
}

// decodeEntry reads member id's value.
func decodeEntry(id, v string) (entry, error) {
	parts := strings.Split(v, ",")
	if len(parts) != entryFields {
		return entry{}, fmt.Errorf("member %q: %d fields, want %d", id, len(parts), entryFields)
	}
	n := make([]int64, entryFields)
	for k, p := range parts {
		x, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return entry{}, fmt.Errorf("member %q: field %d: %w", id, k, err)
		}
		n[k] = x
	}
	if n[0] != entryFormat {
		return entry{}, fmt.Errorf("member %q: format %d, want %d", id, n[0], entryFormat)
	}
	e := entry{id: id, expires: n[1], renewed: n[2]}
	for l := range lanes {
		e.granted[l] = int(n[3+l])
		e.reserved[l] = int(n[3+lanes+l])
		e.inflight[l] = int(n[3+2*lanes+l])
		e.queued[l] = int(n[3+3*lanes+l])
	}
	e.done, e.arrived = n[entryFields-2], n[entryFields-1]
	return e, nil
}

// holding is what e holds of lane l: its grant or, while more is in
// flight, its in flight.
func (e entry) holding(l int) int { return max(e.granted[l], e.inflight[l]) }
