-- Move the next devices pending -> sent, only while the rollout is running.
-- KEYS[1] rollout hash, KEYS[2] order list, KEYS[3] retry list, KEYS[4] counts hash,
-- KEYS[5] deadlines zset, KEYS[6] unpublished set
-- ARGV[1] device hash prefix, ARGV[2] now ms, ARGV[3] ack deadline ms,
-- ARGV[4] position the current wave reaches, ARGV[5..] fresh command ids (one per device)
-- Retried devices go first, then the cohort from the cursor up to the wave's reach.
-- Returns {device id, command id, device id, command id, ...}
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return {}
end
local sent = {}
local wanted = #ARGV - 4
local count = 0
local function send(device_id)
  local key = ARGV[1] .. device_id
  if redis.call('HGET', key, 'state') ~= 'pending' then
    return
  end
  local command_id = ARGV[5 + count]
  local wave = redis.call('HGET', key, 'wave')
  redis.call('HSET', key, 'state', 'sent', 'command_id', command_id, 'sent_at', ARGV[2],
    'updated_at', ARGV[2], 'published', '0', 'key', '')
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HINCRBY', KEYS[4], wave .. ':pending', -1)
  redis.call('HINCRBY', KEYS[4], wave .. ':sent', 1)
  redis.call('HINCRBY', KEYS[4], 'all:pending', -1)
  redis.call('HINCRBY', KEYS[4], 'all:sent', 1)
  redis.call('ZADD', KEYS[5], ARGV[3], device_id)
  redis.call('SADD', KEYS[6], device_id)
  table.insert(sent, device_id)
  table.insert(sent, command_id)
  count = count + 1
end
while count < wanted do
  local device_id = redis.call('LPOP', KEYS[3])
  if not device_id then
    break
  end
  send(device_id)
end
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor') or '0')
local limit = tonumber(ARGV[4])
while count < wanted and cursor < limit do
  local device_id = redis.call('LINDEX', KEYS[2], cursor)
  cursor = cursor + 1
  if device_id then
    send(device_id)
  end
end
redis.call('HSET', KEYS[1], 'cursor', cursor)
return sent
