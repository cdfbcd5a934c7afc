-- Keeps a chat entry in the session's history and appends its frame, unless its message id was seen
-- within the dedup TTL (then 0). Returns the seq.
-- KEYS[1..7]: the session's keys; KEYS[8]: the message id's dedup key (same session,
-- same slot). Slot: the session's.
local k = {
  seq = KEYS[1],          -- counter: the session's last seq
  events = KEYS[2],       -- stream: the session's log, entry id `<seq>-0`
  live = KEYS[3],         -- sharded pub/sub channel
  participants = KEYS[4], -- hash: participant id -> JSON
  query = KEYS[5],        -- hash: text, version, author
  cursors = KEYS[6],      -- hash: participant id -> cursor JSON
  chat = KEYS[7],         -- stream: chat history
}
local chat_id_key = KEYS[8]
local max_len = ARGV[1]
local ttl_secs = ARGV[2]
local entry = ARGV[3]         -- JSON
local frame = ARGV[4]
local chat_max_len = ARGV[5]
local dedup_ttl_secs = ARGV[6]

if not redis.call('SET', chat_id_key, '1', 'NX', 'EX', dedup_ttl_secs) then return 0 end
redis.call('XADD', k.chat, 'MAXLEN', '~', chat_max_len, '*', 'm', entry)
return session_append(k, max_len, ttl_secs, frame)
