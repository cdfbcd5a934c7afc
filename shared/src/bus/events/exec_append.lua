-- Appends events `first`, `first+1`, … to an execution's log (entry ids `<seq>-0`) and publishes each on
-- the execution's sharded channel, in one atomic step, so the log and the live feed agree. A writer
-- sends the events it has ready together (one round trip for several chunks); each comes in its live
-- encoding (`<seq> <0|1> <frame>`), which is both the log entry's `e` field and the published message,
-- so no frame (up to C2S_MAX_CHUNK_BYTES) is copied into a new Lua string.
-- The log is append-only and numbered without gaps: the events are written only if the last one
-- written is first - 1. If it is already the batch's last, this is a retry of a write whose reply was
-- lost (a script is atomic: all of it landed): nothing is written again. Anything else means events the
-- writer wrote are missing (a failover promoted a replica that had not received them): the script
-- refuses with `LOGLOST <last>` and the writer ends the stream explicitly. With force = '1' (that
-- explicit end) the events are written after whatever the log still has.
-- A terminal event (only ever the last) marks the execution `done`, and from then on its log, state and
-- followers are kept only for the finished retention. Nothing is appended after it (`ENDED <last>`): a
-- worker that was still alive when another took its job over (its lease expired) is fenced off, and
-- its query stops at its next event. Returns {1 written | 2 already there, owner}.
-- Slot: the execution's.
local state_key = KEYS[1]     -- hash (its `seq` field: the last seq written)
local events_key = KEYS[2]    -- stream
local live_channel = KEYS[3]  -- sharded pub/sub channel (same hash tag, so the same slot)
local followers_key = KEYS[4] -- hash of the followers' positions
local first = tonumber(ARGV[1])
local max_len = ARGV[2]
local ttl_secs = ARGV[3]
local force = ARGV[4]
local finished_ttl_secs = ARGV[5]
-- ARGV[6], ARGV[7], …: for each event, '1' if it is terminal ('0' if not), then its live encoding
local batch = {unpack(ARGV, 6)}
local count = #batch / 2
local final = first + count - 1

local last = tonumber(redis.call('HGET', state_key, 'seq') or '0')
local owner = redis.call('HGET', state_key, 'owner') or ''
if force ~= '1' then
  if last == final then return {2, owner} end
  if first > last and redis.call('HGET', state_key, 'state') == 'done' then
    return redis.error_reply('ENDED ' .. last)
  end
  if last ~= first - 1 then return redis.error_reply('LOGLOST ' .. last) end
end
local ended = false
for i = 0, count - 1 do
  local seq = first + i
  local event = batch[2 + 2 * i]
  redis.call('XADD', events_key, 'MAXLEN', '~', max_len, seq .. '-0', 'e', event)
  if batch[1 + 2 * i] == '1' then ended = true end
end
redis.call('HSET', state_key, 'seq', final)
if ended then
  redis.call('HSET', state_key, 'state', 'done')
  ttl_secs = finished_ttl_secs
  redis.call('EXPIRE', followers_key, ttl_secs)
end
redis.call('EXPIRE', events_key, ttl_secs)
redis.call('EXPIRE', state_key, ttl_secs)
for i = 0, count - 1 do
  redis.call('SPUBLISH', live_channel, batch[2 + 2 * i])
end
return {1, owner}
