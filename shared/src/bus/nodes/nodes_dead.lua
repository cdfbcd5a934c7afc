-- The gateway nodes whose last beat is older than the presence TTL, by the Redis server's clock.
-- Slot: the node set's.
local nodes = KEYS[1]        -- sorted set: node id -> last beat (Redis time, ms)
local ttl_ms = tonumber(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', nodes, '-inf', now - ttl_ms)
