-- End a transfer: record the bytes it delivered and free or spend the key.
-- KEYS[1] download key hash, KEYS[2] download events stream
-- ARGV[1] claim id, ARGV[2] first byte sent, ARGV[3] end of bytes sent (exclusive),
-- ARGV[4] events stream max length
-- "covered" is the prefix of the file delivered so far; a range starting inside it extends
-- it. Once it reaches the file size the key is spent (one delivery, however many resumes).
-- "delivered" is every byte the key's transfers sent, overlaps included; dk_claim.lua refuses
-- a transfer that would take it past the key's budget. A transfer whose claim was lost still
-- adds its bytes (they went out), unless the key itself is gone.
-- Returns the key's state after the call: issued | spent | lost.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'lost'
end
local sent = math.max(0, tonumber(ARGV[3]) - tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'delivered', sent)
local f = redis.call('HMGET', KEYS[1], 'state', 'claim_id', 'covered', 'size', 'device_id',
  'rollout_id', 'command_id', 'file_name')
if f[1] ~= 'claimed' or f[2] ~= ARGV[1] then
  return 'lost'
end
local covered = tonumber(f[3]) or 0
local first = tonumber(ARGV[2])
local last = tonumber(ARGV[3])
if first <= covered and last > covered then
  covered = last
end
local state = 'issued'
if covered >= tonumber(f[4]) then
  state = 'spent'
end
redis.call('HSET', KEYS[1], 'state', state, 'claim_id', '', 'claim_until', 0, 'covered', covered)
if state == 'spent' then
  local key = string.match(KEYS[1], '[^:]+$')
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', 'delivered', 'key', key,
    'device_id', f[5], 'rollout_id', f[6] or '', 'command_id', f[7] or '',
    'file_name', f[8] or '')
end
return state
