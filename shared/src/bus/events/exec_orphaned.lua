-- Ends an execution whose job will never run, with a terminal event every follower sees: one `pending`
-- for longer than the enqueue grace (its gateway died between the steps of the enqueue), or one
-- `queued` whose job the caller found missing from the queue (lost in a failover or a Redis restart).
-- Does nothing (returns 0) if the execution moved on meanwhile. Returns the seq of the event written.
-- Slot: the execution's.
local state_key = KEYS[1]
local events_key = KEYS[2]
local live_channel = KEYS[3]
local frame = ARGV[1]         -- the terminal frame without `seq` (a JSON object)
local grace_ms = tonumber(ARGV[2])
local job_missing = ARGV[3]   -- '1' if the caller saw the recorded job id missing from the queue
local max_len = ARGV[4]
local ttl_secs = ARGV[5]

local state = redis.call('HGET', state_key, 'state')
local orphaned = false
if state == 'pending' then
  local t = redis.call('TIME')
  local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
  orphaned = now_ms - tonumber(redis.call('HGET', state_key, 'created') or '0') > grace_ms
elseif state == 'queued' then
  orphaned = job_missing == '1'
end
if not orphaned then return 0 end
local seq = tonumber(redis.call('HGET', state_key, 'seq') or '0') + 1
local full = string.sub(frame, 1, -2) .. ',"seq":' .. seq .. '}'
redis.call('XADD', events_key, 'MAXLEN', '~', max_len, seq .. '-0', 't', '1', 'f', full)
redis.call('EXPIRE', events_key, ttl_secs)
redis.call('HSET', state_key, 'seq', seq, 'state', 'lost')
redis.call('EXPIRE', state_key, ttl_secs)
redis.call('SPUBLISH', live_channel, seq .. ' 1 ' .. full)
return seq
