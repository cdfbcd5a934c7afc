-- A worker's start: `queued` -> `running`. A `pending` execution is started too while it is younger than
-- the enqueue grace (its gateway has not recorded the enqueue yet); an older one was abandoned and becomes
-- `lost`. Returns 1 if this worker may run it. Slot: the execution's.
local state_key = KEYS[1]
local worker_id = ARGV[1]
local grace_ms = tonumber(ARGV[2])

local state = redis.call('HGET', state_key, 'state')
if state == 'pending' then
  local t = redis.call('TIME')
  local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
  if now_ms - tonumber(redis.call('HGET', state_key, 'created') or '0') > grace_ms then
    redis.call('HSET', state_key, 'state', 'lost')
    return 0
  end
  state = 'queued'
end
if state == 'queued' then
  redis.call('HSET', state_key, 'state', 'running', 'worker', worker_id)
  return 1
end
return 0
