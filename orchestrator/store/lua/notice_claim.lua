-- Claim notices whose attempt is due: each is pushed `visibility` ms into the future, so no
-- other sender takes it meanwhile, and a sender that dies leaves it to be tried again.
-- KEYS[1] due zset; ARGV[1] now ms, ARGV[2] visibility ms, ARGV[3] at most this many,
-- ARGV[4] notice key prefix
-- Returns the claimed notices as flat field lists.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(due) do
  local fields = redis.call('HGETALL', ARGV[4] .. id)
  if #fields == 0 then
    redis.call('ZREM', KEYS[1], id)  -- expired
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    claimed[#claimed + 1] = fields
  end
end
return claimed
