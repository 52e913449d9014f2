-- One atomic renewal of one member's lease on its fleet's budget. The
-- algorithm and the invariant it keeps are explained in the package doc
-- (doc.go); the comments here say which line does what.
--
-- KEYS[1]       the fleet's hash: field "epoch", and one field per member
-- KEYS[2]       the login line's waiting logins (line.lua), by arrival
-- KEYS[3]       the member each waiting login waits at (line.lua)
-- ARGV[1]       the member's field
-- ARGV[2]       now, in ms; empty for Redis's own clock (TIME)
-- ARGV[3]       the lease, in ms
-- ARGV[4]       the fleet's budget
-- ARGV[5..10]   reserved, max of lanes 0, 1, 2
-- ARGV[11..19]  in flight, queued, held (the grant in use) of lanes 0, 1, 2
-- ARGV[20]      the lane (0-based) an idle member's floor is in
-- ARGV[21]      the member's login completions, per 1000 s (its pace)
-- ARGV[22]      the member's login arrivals, per 1000 s
-- ARGV[23]      the fleet's login rate, per 1000 s; 0 for none
-- ARGV[24]      the fleet's login burst
-- ARGV[25]      the login lane (0-based)
-- ARGV[26]      how long, in ms, a member whose lease ran out is still
--               counted as holding its fallback share (0: not at all)
--
-- Returns {max, reserved of lane 0, of 1, of 2, members, expires, now,
-- learning (1 or 0), the fleet's login completions per 1000 s, the
-- member's part of the login rate per 1000 s, and of the burst, and the
-- arrival (µs) before which the member may admit its own logins, or -1}.
--
-- A member's value: format, expires, renewed, then granted, reserved, in
-- flight and queued of each lane, then its login completions and arrivals
-- per 1000 s, all integers joined by commas.

local LANES = 3
local FORMAT = 2
local FIELDS = 3 + 4 * LANES + 2
local DONE, ARRIVED = FIELDS - 1, FIELDS
-- How many of the line's oldest waiting logins a renewal reads.
local LINEHEAD = 64
local GRANTED, RESERVED, INFLIGHT, QUEUED = 3, 3 + LANES, 3 + 2 * LANES, 3 + 3 * LANES

local function arg(i)
  local n = tonumber(ARGV[i])
  if n == nil then
    error('fleet: argument ' .. i .. ' is not a number')
  end
  return n
end

local function decode(v)
  local e = {}
  for x in string.gmatch(v, '[^,]+') do
    local n = tonumber(x)
    if n == nil then
      return nil
    end
    e[#e + 1] = n
  end
  if #e ~= FIELDS or e[1] ~= FORMAT then
    return nil
  end
  return e
end

local function encode(e)
  local s = {}
  for k = 1, #e do
    s[k] = string.format('%.0f', e[k])
  end
  return table.concat(s, ',')
end

-- idiv is a // b for non-negative integers below 2^53, exact where a
-- division of doubles could round across an integer.
local function idiv(a, b)
  local q = math.floor(a / b)
  while q * b > a do
    q = q - 1
  end
  while (q + 1) * b <= a do
    q = q + 1
  end
  return q
end

-- split returns member s's part of x units shared in proportion to the
-- weights w, by largest remainder: the parts of all members sum to x.
-- Ties go to the smaller name. O(#w).
local function split(x, w, names, s)
  if x <= 0 or w[s] <= 0 then
    return 0
  end
  local total = 0
  for k = 1, #w do
    total = total + w[k]
  end
  local given, q, rem = 0, {}, {}
  for k = 1, #w do
    q[k] = idiv(x * w[k], total)
    rem[k] = x * w[k] - q[k] * total
    given = given + q[k]
  end
  local ahead = 0
  for k = 1, #w do
    if k ~= s and w[k] > 0 and (rem[k] > rem[s] or (rem[k] == rem[s] and names[k] < names[s])) then
      ahead = ahead + 1
    end
  end
  if ahead < x - given then
    return q[s] + 1
  end
  return q[s]
end

-- floored is split, but when x has a unit for every member of positive
-- weight, each first gets one and the rest is split: nobody with demand
-- is left out while there is enough for all.
local function floored(x, w, names, s)
  if w[s] <= 0 then
    return 0
  end
  local n = 0
  for k = 1, #w do
    if w[k] > 0 then
      n = n + 1
    end
  end
  if x < n then
    return split(x, w, names, s)
  end
  return 1 + split(x - n, w, names, s)
end

local key, field = KEYS[1], ARGV[1]
local now = tonumber(ARGV[2])
if now == nil then
  -- Effects replication, so that a write may follow TIME (the default,
  -- and the only mode, from Redis 7).
  if redis.replicate_commands then
    redis.replicate_commands()
  end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local lease, budget = arg(3), arg(4)
local R, M, inflight, queued, held = {}, {}, {}, {}, {}
for l = 1, LANES do
  R[l], M[l] = arg(3 + 2 * l), arg(4 + 2 * l)
  inflight[l], queued[l], held[l] = arg(8 + 3 * l), arg(9 + 3 * l), arg(10 + 3 * l)
end
local floorLane = arg(20) + 1
local myDone, myArrived = arg(21), arg(22)
local loginRate, loginBurst = arg(23), arg(24)
local LOGIN = arg(25) + 1

-- Read the fleet; drop the members whose lease has run out, but keep,
-- for the fallback period, those lost lately as ghosts: such a member may
-- be alive and cut off from Redis, admitting under its fallback share
-- (the fleet's limits ÷ the members it knew), so that share stays counted
-- as held until the period ends. A member that died frees it then.
local fallbackFor = arg(26)
local all = redis.call('HGETALL', key)
local epoch, mine, mineGhost = nil, nil, false
local others, expired, ghosts = {}, {}, {}
for k = 1, #all, 2 do
  local f, v = all[k], all[k + 1]
  if f == 'epoch' then
    epoch = tonumber(v)
  else
    local e = decode(v)
    if e == nil then
      return redis.error_reply('fleet: unreadable lease ' .. f .. ': ' .. v)
    end
    if e[2] <= now and now >= e[2] + fallbackFor then
      expired[#expired + 1] = f
    elseif f == field then
      mine, mineGhost = e, e[2] <= now
    elseif e[2] <= now then
      ghosts[#ghosts + 1] = { f, e }
    else
      others[#others + 1] = { f, e }
    end
  end
end
if #expired > 0 then
  redis.call('HDEL', key, unpack(expired))
end

-- A member holding more than the fleet knows it holds means the fleet lost
-- writes (a wiped or failed-over Redis); so does a fleet without an epoch.
-- Until one lease has passed since, members may have grants the fleet does
-- not know, so nobody grows: each keeps at most what it holds.
-- A ghost's fallback share per lane, as the member computes it: the
-- budget ÷ the members, each lane's max ÷ the members, at least one slot
-- in a lane that has any, within that budget.
local known = #others + 1 + #ghosts
local fallback = {}
do
  local fb = math.max(1, idiv(budget, known))
  for l = 1, LANES do
    local m = idiv(M[l], known)
    if M[l] > 0 then
      m = math.max(m, 1)
    end
    fallback[l] = math.min(m, fb)
  end
end

local lost = epoch == nil
for l = 1, LANES do
  local had = 0
  if mine ~= nil then
    had = math.max(mine[GRANTED + l], mine[INFLIGHT + l])
    if mineGhost then
      -- Back from its fallback share, which the fleet kept for it.
      had = math.max(had, fallback[l])
    end
  end
  if held[l] > had then
    lost = true
  end
end
if lost then
  epoch = now
end
local learning = now < epoch + lease

-- Demand per member and lane (in flight plus queued); every member counts
-- at least one in the floor lane (core), so that it keeps a slot there for
-- its next first request: a member busy with logins only would otherwise
-- hold no core slot, and its next page would wait for renewals.
local names, weight = {}, {}
local function demand(d)
  if d[floorLane] < 1 then
    d[floorLane] = 1
  end
  return d
end
for k, o in ipairs(others) do
  local e, d = o[2], {}
  for l = 1, LANES do
    d[l] = e[INFLIGHT + l] + e[QUEUED + l]
  end
  names[k], weight[k] = o[1], demand(d)
end
local self = #others + 1
do
  local d = {}
  for l = 1, LANES do
    d[l] = inflight[l] + queued[l]
  end
  names[self], weight[self] = field, demand(d)
end
local D = { 0, 0, 0 }
for k = 1, self do
  for l = 1, LANES do
    D[l] = D[l] + weight[k][l]
  end
end

-- The fleet's lane totals T. A lane with demand gets its reservation; a
-- lane without keeps it unallocated (free for that lane only). The rest of
-- the budget goes first to demand beyond the reservations, then, as
-- headroom, in proportion to demand; never above a lane's max.
local laneNames = { 1, 2, 3 }
local T, S = {}, budget
for l = 1, LANES do
  S = S - R[l]
  T[l] = 0
  if D[l] > 0 then
    T[l] = R[l]
  end
end
local want, wanted = {}, 0
for l = 1, LANES do
  want[l] = 0
  if D[l] > 0 then
    want[l] = math.max(0, math.min(M[l], D[l]) - R[l])
  end
  wanted = wanted + want[l]
end
if wanted <= S then
  for l = 1, LANES do
    T[l] = T[l] + want[l]
  end
  S = S - wanted
else
  -- Each lane that wants more first gets one, the rest by what it wants
  -- beyond that one: no lane gets more than it wants.
  local n, less = 0, {}
  for l = 1, LANES do
    less[l] = math.max(0, want[l] - 1)
    if want[l] > 0 then
      n = n + 1
    end
  end
  local give = {}
  for l = 1, LANES do
    if S >= n then
      give[l] = split(S - n, less, laneNames, l)
      if want[l] > 0 then
        give[l] = give[l] + 1
      end
    else
      give[l] = split(S, want, laneNames, l)
    end
  end
  for l = 1, LANES do
    T[l] = T[l] + give[l]
    S = S - give[l]
  end
end
local open = {}
for l = 1, LANES do
  open[l] = D[l] > 0 and T[l] < M[l]
end
while S > 0 do
  local w, any = {}, false
  for l = 1, LANES do
    w[l] = 0
    if open[l] then
      w[l], any = D[l], true
    end
  end
  if not any then
    break
  end
  local part, capped = {}, false
  for l = 1, LANES do
    part[l] = split(S, w, laneNames, l)
    if open[l] and T[l] + part[l] >= M[l] then
      capped = true
    end
  end
  if capped then
    for l = 1, LANES do
      if open[l] and T[l] + part[l] >= M[l] then
        S = S - (M[l] - T[l])
        T[l], open[l] = M[l], false
      end
    end
  else
    for l = 1, LANES do
      T[l] = T[l] + part[l]
    end
    S = 0
  end
end

-- The login lane follows the fleet's one line: of its slots not in use,
-- each goes to the member where one of the logins that have waited
-- longest, fleet-wide, waits. What is left then goes by demand.
local busy, lin, head = 0, {}, {}
for k, o in ipairs(others) do
  lin[k] = o[2][INFLIGHT + LOGIN]
end
lin[self] = inflight[LOGIN]
for k = 1, self do
  busy, head[k] = busy + lin[k], 0
end
-- And between renewals a member admits none of its own logins that
-- arrived after the oldest one waiting at another live member (before):
-- its slot then idles until the renewals move it, rather than let a later
-- login overtake. Logins waiting at a member no longer alive are passed
-- over; their places lapse.
local free, before = T[LOGIN] - busy, -1
local line = redis.call('ZRANGE', KEYS[2], 0, LINEHEAD - 1, 'WITHSCORES')
if #line > 0 then
  local at, ids = {}, {}
  for k = 1, self do
    at[names[k]] = k
  end
  for k = 1, #line, 2 do
    ids[#ids + 1] = line[k]
  end
  for n, o in ipairs(redis.call('HMGET', KEYS[3], unpack(ids))) do
    local k = o and at[o]
    if k then
      if free > 0 then
        head[k], free = head[k] + 1, free - 1
      end
      if k ~= self and before < 0 then
        before = tonumber(line[2 * n])
      end
    end
  end
  if before < 0 and #ids == LINEHEAD then
    before = tonumber(line[#line])
  end
end

-- This member's target in each lane: its part of the lane's total.
local target = {}
for l = 1, LANES do
  local w = {}
  for k = 1, self do
    w[k] = weight[k][l]
  end
  if l == LOGIN then
    local first, sum = {}, 0
    for k = 1, self do
      first[k] = lin[k] + head[k]
      sum = sum + first[k]
    end
    if sum >= T[l] then
      target[l] = split(T[l], first, names, self)
    else
      target[l] = first[self] + floored(T[l] - sum, w, names, self)
    end
  else
    target[l] = floored(T[l], w, names, self)
  end
  if learning then
    target[l] = math.min(target[l], held[l])
  end
end

-- What the live members hold: each at least its grant and its in flight.
-- This member's own grant shrinks at once (base); it grows only into
-- capacity no one holds, keeping the invariant (see doc.go):
--   A = sum of holdings <= budget, H[l] <= M[l],
--   Q = sum over lanes of max(H[l], R[l]) <= budget.
-- When facts break one (a limit lowered, a late member's in flight),
-- nothing grows that would break it further.
local H = { 0, 0, 0 }
for _, o in ipairs(ghosts) do
  local e = o[2]
  for l = 1, LANES do
    H[l] = H[l] + math.max(fallback[l], e[INFLIGHT + l])
  end
end
for _, o in ipairs(others) do
  local e = o[2]
  for l = 1, LANES do
    H[l] = H[l] + math.max(e[GRANTED + l], e[INFLIGHT + l])
  end
end
local base = {}
for l = 1, LANES do
  local old = 0
  if mineGhost then
    -- Back from a ghost: its old grant is long gone to others, and its
    -- fallback share was kept only while it could not renew; it keeps
    -- what it has in flight, and grows like any member.
    old = 0
  elseif mine ~= nil then
    old = mine[GRANTED + l]
  end
  base[l] = math.max(math.min(target[l], old), inflight[l])
  H[l] = H[l] + base[l]
end
local A, Q = 0, 0
for l = 1, LANES do
  A = A + H[l]
  Q = Q + math.max(H[l], R[l])
end
local grant = {}
for l = 1, LANES do
  grant[l] = math.min(target[l], base[l])
  if target[l] > base[l] then
    local x = target[l] - base[l]
    x = math.min(x, M[l] - H[l])
    x = math.min(x, budget - A)
    x = math.min(x, math.max(H[l], R[l]) - H[l] + math.max(0, budget - Q))
    if x > 0 then
      local before = math.max(H[l], R[l])
      H[l] = H[l] + x
      A = A + x
      Q = Q + math.max(H[l], R[l]) - before
      grant[l] = base[l] + x
    end
  end
end

-- Its reservation: its part of each demanded lane's reservation, within
-- its grant.
local reserved = {}
for l = 1, LANES do
  reserved[l] = 0
  if D[l] > 0 then
    local w = {}
    for k = 1, self do
      w[k] = weight[k][l]
    end
    reserved[l] = math.min(floored(R[l], w, names, self), grant[l])
  end
end

-- The login rate: the fleet's, divided in proportion to where logins
-- arrive, with a tenth of it spread evenly so a member where none arrived
-- lately still lets its next one through. The parts add up to the rate.
-- The pace behind the line's estimates: the members' completions, summed.
local pace, arrived = myDone, myArrived
for _, o in ipairs(others) do
  pace, arrived = pace + o[2][DONE], arrived + o[2][ARRIVED]
end
local rateShare, burstShare = 0, 0
if loginRate > 0 then
  if arrived > 0 then
    rateShare = loginRate * (0.9 * myArrived / arrived + 0.1 / self)
  else
    rateShare = loginRate / self
  end
  rateShare = math.max(1, math.floor(rateShare))
  burstShare = math.max(1, math.floor(loginBurst * rateShare / loginRate + 0.5))
end

local expires = now + lease
local e = { FORMAT, expires, now }
for l = 1, LANES do
  e[GRANTED + l], e[RESERVED + l] = grant[l], reserved[l]
  e[INFLIGHT + l], e[QUEUED + l] = inflight[l], queued[l]
end
e[DONE], e[ARRIVED] = myDone, myArrived
if lost then
  redis.call('HSET', key, field, encode(e), 'epoch', string.format('%.0f', epoch))
else
  redis.call('HSET', key, field, encode(e))
end
-- The key outlives every lease in it by one more lease, then goes: an
-- abandoned fleet cleans itself.
local last = expires
for _, o in ipairs(others) do
  last = math.max(last, o[2][2])
end
for _, o in ipairs(ghosts) do
  last = math.max(last, o[2][2] + fallbackFor)
end
redis.call('PEXPIRE', key, last - now + lease)

local learned = 0
if learning then
  learned = 1
end
return { grant[1], reserved[1], grant[2], reserved[2], grant[3], reserved[3], known, expires, now, learned,
  pace, rateShare, burstShare, before }
