-- The place of a waiting job in the fair order, if nothing finished meanwhile: its own user's jobs
-- before it, plus, for every other waiting user, the jobs it would be given before this one (users with
-- fewer running jobs go first; the older head among equals). 1 is next; -1: not waiting. Slot: {jobs}.
local heads = KEYS[2]
local queues = KEYS[3]
local running = KEYS[4]
local user = ARGV[1]
local id = ARGV[2]
local scan = tonumber(ARGV[3])

local k, i = 0, 0
for job in string.gmatch(redis.call('HGET', queues, user) or '', '%S+') do
  i = i + 1
  if job == id then k = i break end
end
if k == 0 then return -1 end
local my_head = tonumber(redis.call('ZSCORE', heads, user) or '0')
local level = tonumber(redis.call('HGET', running, user) or '0') + k - 1
local ahead = k - 1
local others = redis.call('ZRANGE', heads, 0, scan - 1, 'WITHSCORES')
for j = 1, #others, 2 do
  local other = others[j]
  if other ~= user then
    local waiting = 0
    for _ in string.gmatch(redis.call('HGET', queues, other) or '', '%S+') do waiting = waiting + 1 end
    local n = level - tonumber(redis.call('HGET', running, other) or '0')
    if tonumber(others[j + 1]) < my_head then n = n + 1 end
    ahead = ahead + math.max(0, math.min(waiting, n))
  end
end
return ahead + 1
