-- A live worker refreshes its running jobs (those still its own) and its own registration, so nobody
-- reclaims them and its slots keep counting. Slot: {jobs}.
local claims = KEYS[5]
local claimed = KEYS[6]
local workers = KEYS[7]
local consumer = ARGV[1]
local ids = { unpack(ARGV, 2) }

local now = now_ms()
redis.call('ZADD', workers, 'XX', now, consumer)
for _, id in ipairs(ids) do
  local who = redis.call('HGET', claimed, id)
  if who and string.sub(who, 1, #consumer + 1) == consumer .. '\t' then
    redis.call('ZADD', claims, 'XX', now, id)
  end
end
return 1
