-- Appends a job to the fair queue: its body to the job stream, its id to the end of its user's waiting
-- queue (the user enters `heads` if it had nothing waiting), and wakes one idle worker. Returns the job
-- id. Keys: `Keys::scheduler_keys`. Slot: {jobs}.
local stream = KEYS[1]
local heads = KEYS[2]
local queues = KEYS[3]
local wake = KEYS[9]
local user = ARGV[1]
local body = ARGV[2]

local id = redis.call('XADD', stream, '*', 'job', body, 'user', user)
local waiting = redis.call('HGET', queues, user)
if waiting and waiting ~= '' then
  redis.call('HSET', queues, user, waiting .. ' ' .. id)
else
  redis.call('HSET', queues, user, id)
  redis.call('ZADD', heads, tonumber(string.match(id, '^(%d+)')), user)
end
redis.call('LPUSH', wake, '1')
redis.call('LTRIM', wake, 0, 15)
return id
