-- Replaces the shared query text if `base_version` is current (or ''): {1, version, seq}; else
-- {0, current version, current text}. The frame carries `"version":-1`, replaced by the new version.
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
local text = ARGV[3]
local author = ARGV[4]
local base_version = ARGV[5]
local frame = ARGV[6]

local current = tonumber(redis.call('HGET', k.query, 'version') or '0')
if base_version ~= '' and tonumber(base_version) ~= current then
  return {0, current, redis.call('HGET', k.query, 'text') or ''}
end
local version = current + 1
redis.call('HSET', k.query, 'text', text, 'version', version, 'author', author)
local s, e = string.find(frame, '"version":-1', 1, true)
local stamped = string.sub(frame, 1, s - 1) .. '"version":' .. version .. string.sub(frame, e + 1)
return {1, version, session_append(k, max_len, ttl_secs, stamped)}
