-- Register an uploaded file unless its name is taken (firmware is immutable) or the project's
-- deletion has begun.
-- KEYS[1] file hash, KEYS[2] project files index, KEYS[3] all files index, KEYS[4] the
-- project's deletion record
-- ARGV[1] name, ARGV[2] project id, ARGV[3..] field, value pairs
-- Returns 1 when registered, 0 when the name exists, -1 when the project is being deleted.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[2] .. '/' .. ARGV[1])
return 1
