-- Forget a file; returns its path on disk (for the caller to unlink) or false.
-- KEYS[1] file hash, KEYS[2] project files index, KEYS[3] all files index
-- ARGV[1] name, ARGV[2] project id
local path = redis.call('HGET', KEYS[1], 'path')
if not path then
  return false
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2] .. '/' .. ARGV[1])
return path
