-- Takes one of a user's concurrent-query slots for an execution, unless the user has `max` unfinished
-- executions already. Slots are scored by their lease deadline, so a crashed gateway or worker cannot
-- leak one: it is dropped once its lease is over. Slot: the user's.
local running_key = KEYS[1]   -- sorted set: execution id -> lease deadline (ms)
local execution_id = ARGV[1]
local max = tonumber(ARGV[2])
local now_ms = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', running_key, '-inf', now_ms)
if redis.call('ZCARD', running_key) >= max then return 0 end
redis.call('ZADD', running_key, now_ms + lease_ms, execution_id)
redis.call('PEXPIRE', running_key, lease_ms)
return 1
