-- Record one attempt at a notice and what comes next.
-- KEYS[1] notice hash, KEYS[2] due zset; ARGV[1] notice id, ARGV[2] attempt (JSON object),
-- ARGV[3] new state (delivered | pending | failed), ARGV[4] next attempt ms ('' for none)
-- Returns 1, or 0 when the notice is gone (expired).
local attempts = redis.call('HGET', KEYS[1], 'attempts')
if not attempts then
  return 0
end
-- Append to the JSON list as text: decoding and encoding again would mangle it (cjson).
if attempts == '[]' then
  attempts = '[' .. ARGV[2] .. ']'
else
  attempts = string.sub(attempts, 1, -2) .. ',' .. ARGV[2] .. ']'
end
redis.call('HSET', KEYS[1], 'attempts', attempts, 'state', ARGV[3], 'next_attempt_ms', ARGV[4])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
end
return 1
