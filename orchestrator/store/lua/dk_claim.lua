-- Claim a download key for one transfer.
-- KEYS[1] download key hash, KEYS[2] download events stream
-- ARGV[1] device id, ARGV[2] claim id, ARGV[3] now (ms), ARGV[4] claim lease (ms),
-- ARGV[5] events stream max length, ARGV[6] bytes this transfer would send,
-- ARGV[7] the most bytes the key may send in all (domain/downloads.py: delivery_budget_bytes;
-- -1: no bound), ARGV[8] '1' to only check: the verdict a claim would get, nothing written
-- Returns {verdict, covered, delivered}: verdict is ok | unknown | wrong_device | spent | busy
-- | exhausted (the transfer would take the key's delivered bytes past its budget).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'unknown', 0, 0}
end
local f = redis.call('HMGET', KEYS[1], 'device_id', 'state', 'claim_until', 'covered',
  'rollout_id', 'command_id', 'file_name', 'delivered')
if f[1] ~= ARGV[1] then
  return {'wrong_device', 0, 0}
end
if f[2] == 'spent' then
  return {'spent', 0, 0}
end
local now = tonumber(ARGV[3])
if f[2] == 'claimed' and tonumber(f[3]) > now then
  return {'busy', 0, 0}
end
local delivered = tonumber(f[8]) or 0
local budget = tonumber(ARGV[7])
if budget >= 0 and delivered + tonumber(ARGV[6]) > budget then
  return {'exhausted', tonumber(f[4]) or 0, delivered}
end
if ARGV[8] == '1' then
  return {'ok', tonumber(f[4]) or 0, delivered}
end
redis.call('HSET', KEYS[1], 'state', 'claimed', 'claim_id', ARGV[2],
  'claim_until', now + tonumber(ARGV[4]))
local claims = redis.call('HINCRBY', KEYS[1], 'claims', 1)
local key = string.match(KEYS[1], '[^:]+$')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', 'claimed', 'key', key,
  'device_id', f[1], 'rollout_id', f[5] or '', 'command_id', f[6] or '',
  'file_name', f[7] or '', 'claims', claims)
return {'ok', tonumber(f[4]) or 0, delivered}
