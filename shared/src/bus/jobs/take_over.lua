-- A worker taking over the job of a dead one: a job that had not started (`queued`/`pending`) or was
-- running is now this worker's. Returns the state before ('missing' if gone). Slot: the execution's.
local state_key = KEYS[1]
local worker_id = ARGV[1]

local state = redis.call('HGET', state_key, 'state')
if state == 'pending' then state = 'queued' end
if state == 'queued' or state == 'running' then
  redis.call('HSET', state_key, 'state', 'running', 'worker', worker_id)
  return state
end
return state or 'missing'
