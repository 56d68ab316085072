-- Queue one notice for each subscriber, once: a notice id already known is left alone, so an
-- audit entry handled twice (a crash before its acknowledgement) is not sent twice; nor is a
-- notice queued for a subscription deleted meanwhile (it would be left with nobody to clean up).
-- KEYS[1] due zset; ARGV[1] now ms, ARGV[2] notice TTL s, ARGV[3] notice key prefix,
-- ARGV[4] subscription key prefix (its hash; `…:deliveries` its index), ARGV[5] deliveries kept
-- per subscription,
-- then per notice: id, subscription id, fields (JSON object)
-- Returns how many notices were new.
local now = tonumber(ARGV[1])
local made = 0
for i = 6, #ARGV, 3 do
  local id, subscription = ARGV[i], ARGV[i + 1]
  local key = ARGV[3] .. id
  if redis.call('EXISTS', key) == 0 and redis.call('EXISTS', ARGV[4] .. subscription) == 1 then
    redis.call('HSET', key, 'id', id, 'subscription_id', subscription, 'state', 'pending',
      'attempts', '[]', 'created_ms', ARGV[1], 'next_attempt_ms', ARGV[1])
    for name, value in pairs(cjson.decode(ARGV[i + 2])) do
      redis.call('HSET', key, name, tostring(value))
    end
    redis.call('EXPIRE', key, tonumber(ARGV[2]))
    redis.call('ZADD', KEYS[1], now, id)
    local index = ARGV[4] .. subscription .. ':deliveries'
    redis.call('ZADD', index, now, id)
    redis.call('ZREMRANGEBYRANK', index, 0, -tonumber(ARGV[5]) - 1)
    made = made + 1
  end
end
return made
