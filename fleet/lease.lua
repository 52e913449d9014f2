-- One atomic renewal of one member's lease on its fleet's budget. The
-- algorithm and the invariant it keeps are explained in the package doc
-- (doc.go); the comments here say which line does what.
--
-- KEYS[1]       the fleet's hash: field "epoch", and one field per member
-- ARGV[1]       the member's field
-- ARGV[2]       now, in ms; empty for Redis's own clock (TIME)
-- ARGV[3]       the lease, in ms
-- ARGV[4]       the fleet's budget
-- ARGV[5..10]   reserved, max of lanes 0, 1, 2
-- ARGV[11..19]  in flight, queued, held (the grant in use) of lanes 0, 1, 2
-- ARGV[20]      the lane (0-based) an idle member's floor is in
--
-- Returns {max, reserved of lane 0, of 1, of 2, members, expires, now,
-- learning (1 or 0)}.
--
-- A member's value: format, expires, renewed, then granted, reserved, in
-- flight and queued of each lane, all integers joined by commas.

local LANES = 3
local FORMAT = 1
local FIELDS = 3 + 4 * LANES
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

-- Read the fleet; drop the members whose lease has run out.
local all = redis.call('HGETALL', key)
local epoch, mine = nil, nil
local others, expired = {}, {}
for k = 1, #all, 2 do
  local f, v = all[k], all[k + 1]
  if f == 'epoch' then
    epoch = tonumber(v)
  else
    local e = decode(v)
    if e == nil then
      return redis.error_reply('fleet: unreadable lease ' .. f .. ': ' .. v)
    end
    if e[2] <= now then
      expired[#expired + 1] = f
    elseif f == field then
      mine = e
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
local lost = epoch == nil
for l = 1, LANES do
  local had = 0
  if mine ~= nil then
    had = math.max(mine[GRANTED + l], mine[INFLIGHT + l])
  end
  if held[l] > had then
    lost = true
  end
end
if lost then
  epoch = now
end
local learning = now < epoch + lease

-- Demand per member and lane (in flight plus queued); a member with none
-- counts one in the floor lane, so that it keeps a slot for a first request.
local names, weight = {}, {}
local function demand(d)
  local idle = true
  for l = 1, LANES do
    if d[l] > 0 then
      idle = false
    end
  end
  if idle then
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

-- This member's target in each lane: its part of the lane's total.
local target = {}
for l = 1, LANES do
  local w = {}
  for k = 1, self do
    w[k] = weight[k][l]
  end
  target[l] = floored(T[l], w, names, self)
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
for _, o in ipairs(others) do
  local e = o[2]
  for l = 1, LANES do
    H[l] = H[l] + math.max(e[GRANTED + l], e[INFLIGHT + l])
  end
end
local base = {}
for l = 1, LANES do
  local old = 0
  if mine ~= nil then
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

local expires = now + lease
local e = { FORMAT, expires, now }
for l = 1, LANES do
  e[GRANTED + l], e[RESERVED + l] = grant[l], reserved[l]
  e[INFLIGHT + l], e[QUEUED + l] = inflight[l], queued[l]
end
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
redis.call('PEXPIRE', key, last - now + lease)

local learned = 0
if learning then
  learned = 1
end
return { grant[1], reserved[1], grant[2], reserved[2], grant[3], reserved[3], self, expires, now, learned }
