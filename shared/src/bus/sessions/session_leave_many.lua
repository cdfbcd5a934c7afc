-- Several participants of one session leave in one step (a dead node's reaper): each is announced
-- (`participant_left`, numbered in the order given) only if it was still there, exactly as
-- `session_leave.lua` does one by one; returns how many were announced.
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
-- ARGV[3..]: participant id, its `participant_left` frame (without seq), participant id, frame, …
local leaves = {select(3, unpack(ARGV))}

local announced = 0
for i = 1, #leaves - 1, 2 do
  local participant_id, left_frame = leaves[i], leaves[i + 1]
  redis.call('HDEL', k.cursors, participant_id)
  if redis.call('HDEL', k.participants, participant_id) == 1 then
    session_append(k, max_len, ttl_secs, left_frame)
    announced = announced + 1
  end
end
return announced
