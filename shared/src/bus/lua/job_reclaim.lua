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

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', claims, '-inf', now - min_idle_ms, 'LIMIT', 0, count)) do
  local user = string.match(redis.call('HGET', claimed, id) or '', '\t(.*)$') or ''
  local entry = redis.call('XRANGE', stream, id, id)[1]
  if entry then
    local fields, body = entry[2], ''
    for i = 1, #fields, 2 do
      if fields[i] == 'job' then body = fields[i + 1] end
    end
    redis.call('ZADD', claims, now, id)
    redis.call('HSET', claimed, id, consumer .. '\t' .. user)
    table.insert(out, {id, body})
  else
    redis.call('ZREM', claims, id)
    redis.call('HDEL', claimed, id)
    if user ~= '' and redis.call('HINCRBY', running, user, -1) <= 0 then redis.call('HDEL', running, user) end
  end
end
return out
