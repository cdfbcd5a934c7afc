-- Records how far one follower of an execution has written the execution's events to its socket, and
-- until when it counts as live (the window of end-to-end backpressure: `exec_followers.lua` reads it).
-- A follower's position never goes back. Returns the position kept.
-- Slot: the execution's.
local followers_key = KEYS[1]  -- hash: reader id -> '<seq taken> <live until, ms since the epoch>'
local state_key = KEYS[2]      -- the execution's state hash: the followers expire with it
local reader = ARGV[1]
local taken = tonumber(ARGV[2])
local live_for_ms = tonumber(ARGV[3])
local ttl_secs = ARGV[4]       -- when the state has no TTL yet (the follower came before the enqueue)

local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local old = redis.call('HGET', followers_key, reader)
if old then
  local before = tonumber(string.match(old, '^(%d+) '))
  if before and before > taken then taken = before end
end
redis.call('HSET', followers_key, reader, taken .. ' ' .. (now_ms + live_for_ms))
local ttl = redis.call('PTTL', state_key)
if ttl > 0 then
  redis.call('PEXPIRE', followers_key, ttl)
else
  redis.call('EXPIRE', followers_key, ttl_secs)
end
return taken
