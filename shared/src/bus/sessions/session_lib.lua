-- Shared by every session script (prepended to each): numbers a frame with the session's next seq,
-- appends it to the session's log, publishes it on the session's sharded channel and refreshes the TTL
-- of every key of the session. Touches only the keys it is given (all of one session: one slot).
-- k: {seq, events, live, participants, query, cursors, chat} (key names, from KEYS); frame: a JSON object
-- without `seq`.
local function session_append(k, max_len, ttl_secs, frame)
  local seq = redis.call('INCR', k.seq)
  local full = string.sub(frame, 1, -2) .. ',"seq":' .. seq .. '}'
  redis.call('XADD', k.events, 'MAXLEN', '~', max_len, seq .. '-0', 't', '0', 'f', full)
  redis.call('SPUBLISH', k.live, seq .. ' 0 ' .. full)
  for _, key in ipairs({k.seq, k.events, k.participants, k.query, k.cursors, k.chat}) do
    redis.call('EXPIRE', key, ttl_secs)
  end
  return seq
end

