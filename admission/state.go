package admission

// The controller's counts live in one 64-bit word so that every admission
// decision is made against one consistent state: in-flight requests of each
// lane in 12 bits each, anonymous core requests in flight in the next 12,
// and the number of queued requests in the top 16. Checking separate
// counters one after another lets concurrent arrivals overshoot a limit
// together.
const (
	fieldBits   = 12
	fieldMask   = 1<<fieldBits - 1
	anonShift   = 36
	oneAnon     = uint64(1) << anonShift
	queuedShift = 48
	oneQueued   = uint64(1) << queuedShift
)

func inFlightOf(s uint64, l Lane) int { return int(s >> (uint(l) * fieldBits) & fieldMask) }
func anonOf(s uint64) int             { return int(s >> anonShift & fieldMask) }
func queuedOf(s uint64) int           { return int(s >> queuedShift) }
func one(l Lane) uint64               { return 1 << (uint(l) * fieldBits) }

// delta is what admitting r adds to the state word.
func delta(r *Request) uint64 {
	if r.anonymous() {
		return one(r.Lane) + oneAnon
	}
	return one(r.Lane)
}

func totalOf(s uint64) int {
	return inFlightOf(s, Core) + inFlightOf(s, Login) + inFlightOf(s, Export)
}

// canAdmit reports whether lane l may take a slot in state s under lim: the
// lane is under its max, the budget has room, and the slot is either part of
// l's own reservation or not needed to honour another lane's.
func canAdmit(s uint64, lim *Limits, l Lane) bool {
	in := inFlightOf(s, l)
	ll := &lim.Lane[l]
	if in >= ll.Max {
		return false
	}
	total := totalOf(s)
	if total >= lim.Budget {
		return false
	}
	if in < ll.Reserved {
		return true
	}
	unused := 0
	for _, m := range Lanes() {
		if m != l {
			unused += max(0, lim.Lane[m].Reserved-inFlightOf(s, m))
		}
	}
	return lim.Budget-total-unused > 0
}

// canAdmitReq is canAdmit with the anonymous cap applied to anonymous core
// requests.
func canAdmitReq(s uint64, lim *Limits, r *Request) bool {
	if r.anonymous() && lim.AnonMax > 0 && anonOf(s) >= lim.AnonMax {
		return false
	}
	return canAdmit(s, lim, r.Lane)
}

// add changes the state word by delta. Lock-free paths may change the word
// at the same time, so even holders of mu must use atomic arithmetic.
func (c *Controller) add(delta int64) uint64 { return c.state.Add(uint64(delta)) }
