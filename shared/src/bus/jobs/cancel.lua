-- A client's cancel: a queued (or pending) execution is cancelled at once and will never run; a running
-- one is flagged (the caller then tells the workers on the cancel channel). Returns the state before
-- ('missing' if none). Slot: the execution's.
local state_key = KEYS[1]

local state = redis.call('HGET', state_key, 'state')
if not state then return 'missing' end
if state == 'queued' or state == 'pending' then
  redis.call('HSET', state_key, 'state', 'cancelled')
  return 'queued'
end
if state == 'running' then redis.call('HSET', state_key, 'cancel', '1') end
return state
