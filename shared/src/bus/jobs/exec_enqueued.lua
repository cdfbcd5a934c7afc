-- Records that an execution's job is in the queue (its stream entry id): `pending` -> `queued`.
-- A worker may have started it already (then only the job id is recorded). Returns the state before.
-- Slot: the execution's.
local state_key = KEYS[1]
local job_id = ARGV[1]

local state = redis.call('HGET', state_key, 'state')
if not state then return 'missing' end
if state == 'pending' then redis.call('HSET', state_key, 'state', 'queued') end
redis.call('HSET', state_key, 'job', job_id)
return state
