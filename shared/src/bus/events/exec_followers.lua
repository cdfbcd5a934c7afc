-- The live followers of an execution and the lowest seq every one of them has taken (the window of
-- end-to-end backpressure); forgets the followers whose time ran out. Removes from the log the events
-- every live follower took, but none after `trim_up_to` (the writer keeps the latest window of events
-- for late resumes), and records the seq trimmed up to as the state's `trimmed` (so that a later
-- resume from before it is told the events are gone, not that the log lost them).
-- Returns {live followers, lowest seq taken or -1}.
-- Slot: the execution's.
local followers_key = KEYS[1]  -- hash: reader id -> '<seq taken> <live until, ms since the epoch>'
local events_key = KEYS[2]     -- stream, entry ids '<seq>-0'
local state_key = KEYS[3]      -- hash
local trim_up_to = tonumber(ARGV[1])  -- 0: trim nothing

local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local entries = redis.call('HGETALL', followers_key)
local live, lowest = 0, -1
for i = 1, #entries, 2 do
  local taken, live_until = string.match(entries[i + 1], '^(%d+) (%d+)$')
  taken, live_until = tonumber(taken), tonumber(live_until)
  if not live_until or live_until < now_ms then
    redis.call('HDEL', followers_key, entries[i])
  else
    live = live + 1
    if lowest < 0 or taken < lowest then lowest = taken end
  end
end
local up_to = math.min(lowest, trim_up_to)
if up_to > 0 then
  local trimmed = tonumber(redis.call('HGET', state_key, 'trimmed') or '0')
  if up_to > trimmed then
    redis.call('XTRIM', events_key, 'MINID', string.format('%d-0', up_to + 1))
    redis.call('HSET', state_key, 'trimmed', up_to)
  end
end
return {live, lowest}
