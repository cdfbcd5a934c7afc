-- A participant leaves: announced (returns the seq of `participant_left`) only if it was still there,
-- so a close and a dead node's reaper cannot both announce it (returns 0).
-- KEYS[1..7]: the session's keys. Slot: the session's.
local k = {
  seq = KEYS[1],          -- counter: the session's last seq
  events = KEYS[2],       -- stream: the session's log, entry id `<seq>-0`
  live = KEYS[3],         -- sharded pub/sub channel
  participants = KEYS[4], -- hash: participant id -> JSON
  query = KEYS[5],        -- hash: text, version, author
  cursors = KEYS[6],      -- hash: participant id -> cursor JSON
  chat = KEYS[7],         -- stream: chat history
}
local max_len = ARGV[1]
local ttl_secs = ARGV[2]
local participant_id = ARGV[3]
local left_frame = ARGV[4]

redis.call('HDEL', k.cursors, participant_id)
if redis.call('HDEL', k.participants, participant_id) == 1 then
  return session_append(k, max_len, ttl_secs, left_frame)
end
return 0
