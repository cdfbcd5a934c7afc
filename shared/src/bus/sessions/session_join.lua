-- A participant joins (unless the session is full; a rejoin first takes over its previous entry): returns {0} (full) or the snapshot as of its own
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
local user_id = ARGV[8]
local rejoin = ARGV[9] == '1'
local replaces = ARGV[10]         -- '' or the rejoiner's previous participant id
local replaced_frame = ARGV[11]   -- its `participant_left` (reason `replaced`)
local node_id = ARGV[12]          -- the joiner's node
local gone_list = ARGV[13]        -- '' or tab-separated ids of nodes whose link to Redis is gone
local ghost_frame = ARGV[14]      -- `participant_left` (reason `replaced`) of a ghost on a gone node
local ghost_placeholder = ARGV[15] -- the JSON string standing for the ghost's id in ghost_frame

-- A rejoin takes over its own previous entry (a ghost of a dead node, or a socket about to close): one
-- `participant_left` for it, before the `participant_joined`. Only the same user's entry is taken.
if replaces ~= '' then
  local old = redis.call('HGET', k.participants, replaces)
  if old and cjson.decode(old).userId == user_id then
    redis.call('HDEL', k.participants, replaces)
    redis.call('HDEL', k.cursors, replaces)
    session_append(k, max_len, ttl_secs, replaced_frame)
  end
end

-- A rejoin also takes over the user's entries on nodes whose link to Redis is gone (a dead node not
-- reaped yet); the same user's entries on live nodes (other tabs) stay.
if rejoin and gone_list ~= '' then
  local gone = {}
  for node in string.gmatch(gone_list, '[^\t]+') do gone[node] = true end
  local entries = redis.call('HGETALL', k.participants)
  for i = 1, #entries, 2 do
    local id, p = entries[i], cjson.decode(entries[i + 1])
    if p.userId == user_id and gone[p.nodeId] then
      redis.call('HDEL', k.participants, id)
      redis.call('HDEL', k.cursors, id)
      local at = string.find(ghost_frame, ghost_placeholder, 1, true)
      if at then
        local frame = string.sub(ghost_frame, 1, at - 1) .. cjson.encode(id)
          .. string.sub(ghost_frame, at + #ghost_placeholder)
        session_append(k, max_len, ttl_secs, frame)
      end
    end
  end
end

-- The cap counts live participants: a rejoiner's own entries on other nodes are ghosts-to-be.
local count = redis.call('HLEN', k.participants)
if rejoin and count >= max_participants then
  for _, json in ipairs(redis.call('HVALS', k.participants)) do
    local p = cjson.decode(json)
    if p.userId == user_id and p.nodeId ~= node_id then count = count - 1 end
  end
end
if count >= max_participants then return {0} end
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
