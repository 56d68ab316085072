-- HGETALL of every key, in one call: {{field, value, ...}, ...} ({} for a missing key).
local rows = {}
for i, key in ipairs(KEYS) do
  rows[i] = redis.call('HGETALL', key)
end
return rows
