-- Appends event `seq` to an execution's log (entry id `<seq>-0`) and publishes it on the execution's
-- sharded channel, in one atomic step, so the log and the live feed agree. The writer sends the event
-- in its live encoding (`<seq> <0|1> <frame>`), which is both the log entry's `e` field and the
-- published message: the frame (up to C2S_MAX_CHUNK_BYTES) is not copied into a new Lua string, which
-- cost Redis about as much as the rest of the script for a 60 KB chunk.
-- The log is append-only and numbered without gaps: the event is written only if the last one written
-- is seq - 1. If it is already seq, this is a retry of a write whose reply was lost: nothing is written
-- again. Anything else means events the writer wrote are missing (a failover promoted a replica that had
-- not received them): the script refuses with `LOGLOST <last>` and the writer ends the stream explicitly.
-- With force = '1' (that explicit end) the event is written after whatever the log still has.
-- A terminal event marks the execution `done`, and from then on its log, state and followers are kept
-- only for the finished retention. Nothing is appended after it (`ENDED <last>`): a worker that was
-- still alive when another took its job over (its lease expired) is fenced off, and its query stops at
-- its next event. Returns {1 written | 2 already there, owner}.
-- Slot: the execution's.
local state_key = KEYS[1]     -- hash (its `seq` field: the last seq written)
local events_key = KEYS[2]    -- stream
local live_channel = KEYS[3]  -- sharded pub/sub channel (same hash tag, so the same slot)
local followers_key = KEYS[4] -- hash of the followers' positions
local seq = tonumber(ARGV[1])
local terminal = ARGV[2]      -- '1' or '0'
local event = ARGV[3]        -- '<seq> <terminal> <frame>'
local max_len = ARGV[4]
local ttl_secs = ARGV[5]
local force = ARGV[6]
local finished_ttl_secs = ARGV[7]

local last = tonumber(redis.call('HGET', state_key, 'seq') or '0')
local owner = redis.call('HGET', state_key, 'owner') or ''
if force ~= '1' then
  if last == seq then return {2, owner} end
  if seq > last and redis.call('HGET', state_key, 'state') == 'done' then
    return redis.error_reply('ENDED ' .. last)
  end
  if last ~= seq - 1 then return redis.error_reply('LOGLOST ' .. last) end
end
redis.call('XADD', events_key, 'MAXLEN', '~', max_len, seq .. '-0', 'e', event)
redis.call('HSET', state_key, 'seq', seq)
if terminal == '1' then
  redis.call('HSET', state_key, 'state', 'done')
  ttl_secs = finished_ttl_secs
  redis.call('EXPIRE', followers_key, ttl_secs)
end
redis.call('EXPIRE', events_key, ttl_secs)
redis.call('EXPIRE', state_key, ttl_secs)
redis.call('SPUBLISH', live_channel, event)
return {1, owner}
