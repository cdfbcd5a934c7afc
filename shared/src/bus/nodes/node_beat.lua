-- A gateway node marks itself alive: its score in the node set is the Redis server's clock (ms), so
-- the nodes' own clocks (which may disagree by more than a short presence TTL) never matter.
-- Slot: the node set's.
local nodes = KEYS[1]   -- sorted set: node id -> last beat (Redis time, ms)
local node_id = ARGV[1]

local t = redis.call('TIME')
redis.call('ZADD', nodes, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), node_id)
return 1
