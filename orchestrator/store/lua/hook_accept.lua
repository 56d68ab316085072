-- Accept a hook delivery once: the first time, record it and queue the deploy request; a
-- repeat within the delivery's TTL returns what the first one was given. A repeat is the same
-- delivery id or, when KEYS[4] is given, the same signed body (a GitHub signature does not
-- cover the delivery id, so a captured body could otherwise be posted again under a new id).
-- KEYS[1] delivery hash, KEYS[2] the hook's delivery index, KEYS[3] deploy request stream,
-- KEYS[4] (optional) the signed body's record
-- ARGV[1] rollout id for a new delivery, ARGV[2] TTL s, ARGV[3] now ms, ARGV[4] delivery id,
-- ARGV[5] delivery fields (JSON object), ARGV[6] request fields (JSON object, rollout_id is
-- added), ARGV[7] deliveries kept in the index, ARGV[8] stream entries kept (approximate),
-- ARGV[9] the hook's hash (a hook deleted meanwhile, alone or with its project, takes none)
-- Returns {rollout id, '1' when new or '0' for a repeat} or {'', 'gone'}
local known = redis.call('HGET', KEYS[1], 'rollout_id')
if known then
  return {known, '0'}
end
if redis.call('EXISTS', ARGV[9]) == 0 then
  return {'', 'gone'}
end
if KEYS[4] then
  local signed = redis.call('GET', KEYS[4])
  if signed then
    return {signed, '0'}
  end
  redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[2]))
end
redis.call('HSET', KEYS[1], 'rollout_id', ARGV[1])
for name, value in pairs(cjson.decode(ARGV[5])) do
  redis.call('HSET', KEYS[1], name, tostring(value))
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[4])
local keep = tonumber(ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -keep - 1)
local entry = {'rollout_id', ARGV[1]}
for name, value in pairs(cjson.decode(ARGV[6])) do
  entry[#entry + 1] = name
  entry[#entry + 1] = tostring(value)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', unpack(entry))
return {ARGV[1], '1'}
