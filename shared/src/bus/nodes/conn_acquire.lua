-- Takes one of a user's connection slots (over all nodes) for a socket, unless the user has `max` live
-- ones; also renews a socket's lease (same member). Leases are scored by their deadline, so a dead
-- node's sockets drop out once their leases end. Returns 1 if the socket may stay. Slot: the user's.
local connections = KEYS[1]
local member = ARGV[1]
local max = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', connections, '-inf', now)
if not redis.call('ZSCORE', connections, member) and redis.call('ZCARD', connections) >= max then
  return 0
end
redis.call('ZADD', connections, now + lease_ms, member)
redis.call('PEXPIRE', connections, lease_ms)
return 1
