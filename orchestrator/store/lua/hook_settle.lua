-- Record what became of a delivery while it is kept; HSET leaves its TTL as it is.
-- KEYS[1] delivery hash; ARGV[1] status, ARGV[2] reason. Returns 1, or 0 when it expired.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reason', ARGV[2])
return 1
