// Package fleet shares one budget of slots among several lanegates (the
// members of a fleet) that stand in front of one database pool, so that N
// replicas admit no more than the pool allows, not N times as much.
//
// Each member holds a lease on a share of each lane's slots. It renews the
// lease every few hundred milliseconds with Leases.Renew: one Lua script
// (lease.lua) that runs atomically in Redis, never a round trip per
// request. Between renewals a member admits locally, under its grant: the
// grant of lane l is its local max of l, their sum its local budget.
//
// # What is stored
//
// One Redis hash per fleet, lanegate:{<fleet>}:lease (one hash tag, so it
// lives on one Redis Cluster slot): per member its grant and reservation
// per lane, the in flight and queued it reported, when it renewed and when
// its lease expires; and an epoch (see Learning). A member whose lease has
// expired is removed by the next renewal, and its capacity is free. The
// key itself expires one lease after the last lease in it, so an
// abandoned fleet cleans itself. Every renewal reads all members: O(members).
//
// # The invariant
//
// A member m holds, in lane l, h(m,l) = max(g(m,l), i(m,l)): its grant and
// the in flight it last reported. With H(l) the sum of h over the live
// members, the fleet's budget B, and lane l's reservation R(l) and max M(l):
//
//	sum over l of H(l)             <= B     (the budget)
//	H(l)                           <= M(l)  (each lane's max, fleet-wide)
//	sum over l of max(H(l), R(l))  <= B     (no lane holds another's reservation)
//
// Why holdings and not grants: a member admits only under its grant, so
// its actual in flight never exceeds max(its grant, its in flight at its
// last renewal). A grant may therefore always shrink at once (the excess
// in flight drains, and still counts until the member reports it gone), but
// it may grow only into capacity that no live member holds. The script
// grows a grant by at most what keeps the three sums within their limits;
// so if they held before a renewal they hold after it. When facts break
// them (a lowered limit, a member that was lost and comes back with
// requests in flight), a renewal never grows anything that would break them
// further, and they hold again as the excess drains.
//
// This holds only if a member keeps its side, which Renew documents: from
// the moment it calls Renew until the call returns, and after a failed
// call, it admits in no lane more than it had in flight when it called
// (nor more than its grant); the script may already have recorded a
// smaller grant that others grow into. Renew's Grant says what the member
// may use in every case.
//
// # The allocation
//
// Each renewal computes a target for the renewing member from every live
// member's demand (in flight plus queued, per lane; every member counts at
// least one in the core lane, so it keeps a slot for its next page even
// while it is busy with logins only):
//
//  1. Fleet-wide, a lane with demand gets its reservation; a lane without
//     keeps its reservation unallocated: no other lane may use it, exactly
//     as in one lanegate, so it is free for the first member that has
//     demand there.
//  2. The rest of the budget goes to the lanes' demand beyond their
//     reservations (every lane with such demand first gets one slot),
//     then what remains, as headroom, to the lanes with demand in
//     proportion to it, water-filled under each lane's max.
//  3. Each lane's total is divided among its members in proportion to
//     their demand, by largest remainder (ties to the smaller member id);
//     when there are enough slots, every member with demand in the lane
//     first gets one, so a quiet member is never starved by a busy one.
//     A member's reservation in the lane is its part of the lane's
//     reservation, divided the same way, within its grant.
//
// The grant is then the target, clamped by the invariant: at once when it
// shrinks, into free capacity when it grows. So capacity follows demand
// within about one renewal of every member: when a storm lands on one
// member, its next renewal records its demand, the others shrink at their
// next renewals, and it grows into what they freed at its own next one.
//
// # Time
//
// By default the script reads Redis's clock (TIME): every member's lease is
// timed by the same clock, so the members' clock skew does not matter. The
// member's own view of its lease (Grant.Expires) is its clock when it
// called Renew plus the lease, which ends no later than the lease in Redis.
// The ClockTime option passes the member's clock to the script instead:
// for tests with a fake clock, or fleets whose clocks agree; a member whose
// clock runs ahead would expire the others' leases early.
//
// # Learning
//
// A fleet that Redis does not know (a new fleet, or a Redis that restarted
// empty or failed over and lost writes) may have members holding grants
// it has no record of. A renewal that finds no epoch, or a member that
// holds more than the fleet has recorded for it, starts a learning period
// of one lease: no member's grant grows beyond what it holds (Renew reports
// it), so each comes back with at most its old grant, and after one lease
// every grant made before has either been reported again or expired. The
// price: a fleet started from nothing admits nothing for its first lease.
//
// # Where the guarantee ends
//
//   - A member that admits past its lease (the fallback below) does so
//     outside the fleet's accounting: its in flight counts again only when
//     it renews, and renewals grow nothing into the excess. With
//     KeepFallback(d), the fleet counts such a member (a ghost) as holding
//     its fallback share, or its last reported in flight if more, for d
//     past its lease, so a member cut off for less than d stays within the
//     sums; past d, or without the option, it does not.
//   - A Redis that fails over with asynchronous replication may come back
//     without the last renewals. The member that made one notices at its
//     next renewal (it holds more than the fleet says) and the fleet
//     relearns; a member renewing before that may be granted what a lost
//     renewal granted. The window is one renewal period; closing it would
//     take a WAIT for a replica on every renewal.
//   - Leases are timed by one clock: a Redis clock that jumps forward ends
//     leases early (with ClockTime, so does a member's clock that runs
//     ahead of the others').
//   - Leave stops counting the member's in flight: call it once drained.
//
// # The login line and the login rate
//
// The lease also carries the login lane's order and pace. The renewal
// reads the head of the fleet's login line (see Line): of the login
// lane's slots not in use, each goes to the member where one of the
// logins that have waited longest waits, and Grant.LoginBefore tells each
// member the arrival of the oldest login waiting at another, before which
// alone it may admit its own. Members report their login pace (Pace): the
// completions are summed into Grant.LoginRate, and the fleet's login rate
// (Limits.Login) is divided by where logins arrive into Grant.Login.
//
// # Not here
//
// What a member does when Redis is gone past its lease (fall back to the
// budget divided by the last known number of members, Grant.Members and
// Leases.LastMembers) is its caller's; so is wiring the grants into the
// admission controller.
package fleet
