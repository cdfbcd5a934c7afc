-- A job is done (its terminal event published, or it was skipped): its slot is given back to its user,
-- its body deleted, and an idle worker woken if jobs wait. Slot: {jobs}.
local stream = KEYS[1]
local heads = KEYS[2]
local running = KEYS[4]
local claims = KEYS[5]
local claimed = KEYS[6]
local wake = KEYS[9]
local id = ARGV[1]

local who = redis.call('HGET', claimed, id)
if who then
  release(running, claim_user(who))
  redis.call('HDEL', claimed, id)
end
redis.call('ZREM', claims, id)
redis.call('XDEL', stream, id)
if redis.call('ZCARD', heads) > 0 then
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 15)
end
return 1
