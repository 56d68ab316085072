-- Change a project's fields unless it is gone or its deletion has begun.
-- KEYS[1] project hash, KEYS[2] its deletion record
-- ARGV: field, value pairs (none: nothing changes)
-- Returns 'missing', 'deleting', or the project's fields as HGETALL gives them.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'missing'
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'deleting'
end
if #ARGV > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
end
return redis.call('HGETALL', KEYS[1])
