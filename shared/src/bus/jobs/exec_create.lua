-- Creates an execution in state `pending` (accepted, its job not yet in the queue), stamped with the
-- server's time so that a `pending` left behind by a crashed gateway can be told apart later.
-- Returns 0 (nothing written) if the execution exists already. Slot: the execution's.
local state_key = KEYS[1]     -- hash: state, owner, session, created, job, seq, worker, cancel
local owner = ARGV[1]
local session_id = ARGV[2]    -- '' for none
local ttl_secs = ARGV[3]

if redis.call('EXISTS', state_key) == 1 then return 0 end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', state_key, 'state', 'pending', 'owner', owner, 'session', session_id, 'created', now_ms)
redis.call('EXPIRE', state_key, ttl_secs)
return 1
