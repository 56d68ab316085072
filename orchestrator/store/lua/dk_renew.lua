-- Extend a transfer's claim while it is still streaming.
-- KEYS[1] download key hash; ARGV[1] claim id, ARGV[2] now (ms), ARGV[3] lease (ms)
-- Returns 1 while the claim is held, 0 when it was lost (revoked, expired, taken over).
local f = redis.call('HMGET', KEYS[1], 'state', 'claim_id')
if f[1] ~= 'claimed' or f[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'claim_until', tonumber(ARGV[2]) + tonumber(ARGV[3]))
return 1
