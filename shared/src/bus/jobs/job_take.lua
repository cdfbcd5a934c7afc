-- A worker with a free slot takes the next job, chosen by user, not FIFO (see `scheduler.rs`):
-- 1. the worker registers its slots; workers not seen for the ttl drop out of the total;
-- 2. among users with waiting jobs (oldest head first), one may take a slot if it has nothing running,
--    or if more than `reserved` slots are free;
-- 3. of those, the one with the fewest running jobs wins (the oldest head among equals), skipping users
--    holding `share` of all slots or more while another user waits (unless only they could take it);
-- 4. its oldest waiting job is claimed (`claims`, `claimed`, `running`).
-- Returns {job id, job body, jobs its user had running} or nil. Slot: {jobs}.
local stream = KEYS[1]
local heads = KEYS[2]
local queues = KEYS[3]
local running = KEYS[4]
local claims = KEYS[5]
local claimed = KEYS[6]
local workers = KEYS[7]
local slots = KEYS[8]
local consumer = ARGV[1]
local concurrency = tonumber(ARGV[2])
local worker_ttl_ms = tonumber(ARGV[3])
local share = tonumber(ARGV[4])
local reserved = tonumber(ARGV[5])
local scan = tonumber(ARGV[6])

local now = now_ms()
redis.call('ZADD', workers, now, consumer)
redis.call('HSET', slots, consumer, concurrency)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', workers, '-inf', now - worker_ttl_ms)) do
  redis.call('ZREM', workers, dead)
  redis.call('HDEL', slots, dead)
end
local total = 0
for _, n in ipairs(redis.call('HVALS', slots)) do total = total + tonumber(n) end
local free = total - redis.call('ZCARD', claims)
local cap = math.max(1, math.floor(share * total))

local function pick()
  local users = redis.call('ZRANGE', heads, 0, scan - 1)
  local others = #users > 1
  local best, best_r, any, any_r = nil, 0, nil, 0
  for _, user in ipairs(users) do
    local r = tonumber(redis.call('HGET', running, user) or '0')
    if r == 0 or free > reserved then
      if any == nil or r < any_r then any, any_r = user, r end
      if (r < cap or not others) and (best == nil or r < best_r) then best, best_r = user, r end
    end
  end
  if best then return best, best_r end
  return any, any_r
end

-- A job whose body is gone (trimmed, lost in a failover) is dropped and the next one picked.
for _ = 1, 8 do
  local user, r = pick()
  if not user then return nil end
  local waiting = redis.call('HGET', queues, user) or ''
  local id, rest = string.match(waiting, '^(%S+)%s*(.*)$')
  if not id or rest == '' then
    redis.call('HDEL', queues, user)
    redis.call('ZREM', heads, user)
  else
    redis.call('HSET', queues, user, rest)
    redis.call('ZADD', heads, tonumber(string.match(rest, '^(%d+)')), user)
  end
  if id then
    local body = job_body(stream, id)
    if body then
      redis.call('HINCRBY', running, user, 1)
      redis.call('ZADD', claims, now, id)
      redis.call('HSET', claimed, id, consumer .. '\t' .. user)
      return {id, body, r}
    end
  end
end
return nil
