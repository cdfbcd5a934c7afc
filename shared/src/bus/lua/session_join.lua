-- A participant joins (unless the session is full): returns {0} (full) or the snapshot as of its own
-- `participant_joined` event: {1, seq, participants, text, version, author, cursors (flat), chat}.
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
local participant = ARGV[4]       -- JSON
local max_participants = tonumber(ARGV[5])
local joined_frame = ARGV[6]
local chat_history = tonumber(ARGV[7])

if redis.call('HLEN', k.participants) >= max_participants then return {0} end
redis.call('HSET', k.participants, participant_id, participant)
local seq = session_append(k, max_len, ttl_secs, joined_frame)
local q = redis.call('HMGET', k.query, 'text', 'version', 'author')
local chat = {}
if chat_history > 0 then
  local recent = redis.call('XREVRANGE', k.chat, '+', '-', 'COUNT', chat_history)
  for i = #recent, 1, -1 do table.insert(chat, recent[i][2][2]) end
end
return {1, seq, redis.call('HVALS', k.participants), q[1] or '', q[2] or '0', q[3] or '',
        redis.call('HGETALL', k.cursors), chat}
