-- Shared by the job scripts (prepended to each; no KEYS of its own): the server's time, a job's body
-- from the job stream, a claim's user, and giving a user's slot back. Touches only the keys it is given.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- The `job` field of the stream entry `id`, or nil if the entry is gone.
local function job_body(stream, id)
  local entry = redis.call('XRANGE', stream, id, id)[1]
  if not entry then return nil end
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'job' then return fields[i + 1] end
  end
  return ''
end

-- The user of a `claimed` value (`<consumer>\t<user>`), or ''.
local function claim_user(who)
  return string.match(who or '', '\t(.*)$') or ''
end

-- One job of `user` no longer holds a slot.
local function release(running, user)
  if user ~= '' and redis.call('HINCRBY', running, user, -1) <= 0 then
    redis.call('HDEL', running, user)
  end
end
