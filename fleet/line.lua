-- The login line a fleet shares: one atomic step, an arrival or a batch of
-- reports. What is stored and why is in line.go; the comments here say
-- which line does what. Times are microseconds of Redis's clock.
--
-- KEYS[1]  line:    every place, waiting here or away, by first arrival
-- KEYS[2]  waiting: the places whose logins wait at a member now
-- KEYS[3]  present: place -> the member (its lease field) it waits at
-- KEYS[4]  lapse:   place -> when it lapses if nobody reports on it
-- KEYS[5]  used:    place -> until when its tickets are refused
--
-- ARGV[1]  "arrive" or "report"
-- ARGV[2]  the member's lease field
-- ARGV[3]  how long a key outlives its last write, in ms
--
-- arrive:  ARGV[4] the ticket's place ("0" for none), ARGV[5] its first
--          arrival, ARGV[6] the place to make when the ticket is no good,
--          ARGV[7] how long the login may wait, in µs, ARGV[8] how old a
--          place may rank, in µs.
--          Returns {place, arrival, places ahead, 1 when new or 0}.
-- report:  ARGV[4..] groups of four: op, place, first arrival, µs to keep
--          the record; op is "used" (admitted), "away" (sent away with its
--          place, or left), "drop" (leaves the line) or "keep" (a place for
--          someone on the waiting page). Returns how many were applied.

local line, waiting, present, lapse, used = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local member = ARGV[2]
local ttl = tonumber(ARGV[3])

if redis.replicate_commands then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function num(x)
  return string.format('%.0f', x)
end

-- Places nobody reported on in time lapse: a member that died with
-- logins waiting, a login that never came back. Bounded per call; every
-- call purges, so the backlog cannot grow faster than it shrinks.
local gone = redis.call('ZRANGEBYSCORE', lapse, '-inf', num(now), 'LIMIT', 0, 256)
if #gone > 0 then
  redis.call('ZREM', line, unpack(gone))
  redis.call('ZREM', waiting, unpack(gone))
  redis.call('HDEL', present, unpack(gone))
  redis.call('ZREM', lapse, unpack(gone))
end
redis.call('ZREMRANGEBYSCORE', used, '-inf', num(now))

-- leaves takes id out of the waiting logins, if it waits at this member.
local function leaves(id)
  local at = redis.call('HGET', present, id)
  if at == member then
    redis.call('HDEL', present, id)
    redis.call('ZREM', waiting, id)
  end
  return at
end

local out
if ARGV[1] == 'arrive' then
  local id, arrival, fresh = ARGV[4], tonumber(ARGV[5]), 0
  local hold, maxAge = tonumber(ARGV[7]), tonumber(ARGV[8])
  -- A ticket ranks its holder unless its place waits somewhere now (the
  -- ticket used twice at once), was used, or is too old or from the future.
  if id ~= '0' then
    if redis.call('HEXISTS', present, id) == 1 or redis.call('ZSCORE', used, id)
        or arrival == nil or arrival <= 0 or now - arrival > maxAge or arrival > now + 5000000 then
      id = '0'
    end
  end
  if id == '0' then
    id, arrival, fresh = ARGV[6], now, 1
  end
  redis.call('ZADD', line, num(arrival), id)
  redis.call('ZADD', waiting, num(arrival), id)
  redis.call('HSET', present, id, member)
  redis.call('ZADD', lapse, num(now + hold), id)
  local ahead = redis.call('ZCOUNT', line, '-inf', '(' .. num(arrival))
  out = { id, num(arrival), ahead, fresh }
elseif ARGV[1] == 'report' then
  local n = 0
  for k = 4, #ARGV - 3, 4 do
    local op, id, arrival, keep = ARGV[k], ARGV[k + 1], ARGV[k + 2], tonumber(ARGV[k + 3])
    if op == 'used' then
      leaves(id)
      redis.call('ZREM', line, id)
      redis.call('ZREM', lapse, id)
      redis.call('ZADD', used, num(now + keep), id)
    elseif op == 'away' then
      local at = leaves(id)
      if (at == false or at == member) and not redis.call('ZSCORE', used, id) then
        redis.call('ZADD', line, arrival, id)
        redis.call('ZADD', lapse, num(now + keep), id)
      end
    elseif op == 'drop' then
      if leaves(id) == member then
        redis.call('ZREM', line, id)
        redis.call('ZREM', lapse, id)
      end
    elseif op == 'keep' then
      if redis.call('HEXISTS', present, id) == 0 and not redis.call('ZSCORE', used, id) then
        redis.call('ZADD', line, arrival, id)
        redis.call('ZADD', lapse, num(now + keep), id)
      end
    else
      return redis.error_reply('fleet: unknown line report ' .. tostring(op))
    end
    n = n + 1
  end
  out = n
else
  return redis.error_reply('fleet: unknown line step ' .. tostring(ARGV[1]))
end

for _, k in ipairs(KEYS) do
  redis.call('PEXPIRE', k, ttl)
end
return out
