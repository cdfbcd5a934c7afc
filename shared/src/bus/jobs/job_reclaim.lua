-- Jobs whose worker stopped refreshing them for `min_idle_ms` (it died) become `consumer`'s; they keep
-- their user's slot. One whose body is gone is dropped (its slot freed). Returns {{id, body}, ...}.
-- Slot: {jobs}.
local stream = KEYS[1]
local running = KEYS[4]
local claims = KEYS[5]
local claimed = KEYS[6]
local consumer = ARGV[1]
local min_idle_ms = tonumber(ARGV[2])
local count = tonumber(ARGV[3])

local now = now_ms()
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', claims, '-inf', now - min_idle_ms, 'LIMIT', 0, count)) do
  local user = claim_user(redis.call('HGET', claimed, id))
  local body = job_body(stream, id)
  if body then
    redis.call('ZADD', claims, now, id)
    redis.call('HSET', claimed, id, consumer .. '\t' .. user)
    table.insert(out, {id, body})
  else
    redis.call('ZREM', claims, id)
    redis.call('HDEL', claimed, id)
    release(running, user)
  end
end
return out
