-- Move the next devices pending -> sent, only while the rollout is running, each with its
-- download key and its command record, in one step: a device is never sent without them.
-- KEYS[1] rollout hash, KEYS[2] order list, KEYS[3] retry list, KEYS[4] counts hash,
-- KEYS[5] deadlines zset, KEYS[6] unpublished set
-- ARGV[1] device hash prefix, ARGV[2] now ms, ARGV[3] ack deadline ms,
-- ARGV[4] position the current wave reaches, ARGV[5] key hash prefix,
-- ARGV[6] device key-set prefix, ARGV[7] device key-set suffix, ARGV[8] command hash prefix,
-- ARGV[9] key fields shared by the batch (JSON object: project_id, file_name, size,
-- rollout_id), ARGV[10] key expiry (epoch ms), ARGV[11] key TTL s, ARGV[12] command fields
-- shared by the batch (JSON object), ARGV[13] command record TTL s, ARGV[14] counter names
-- (JSON: {"total": prefix, "wave": between wave number and state}, from domain/counters.py),
-- ARGV[15] the send (JSON: {"rollout": the rollout state it needs, "from": device state,
-- "to": device state}, from the domain's table), ARGV[16..] (command id, download key) for
-- each device to send
-- Retried devices go first, then the cohort from the cursor up to the wave's reach.
-- Returns {device id, command id, key, device id, command id, key, ...}
local names = cjson.decode(ARGV[14])
local rule = cjson.decode(ARGV[15])
if redis.call('HGET', KEYS[1], 'state') ~= rule.rollout then
  return {}
end
local FIRST = 16
local sent = {}
local wanted = (#ARGV - FIRST + 1) / 2
local count = 0
local key_fields = {}
for name, value in pairs(cjson.decode(ARGV[9])) do
  table.insert(key_fields, name)
  table.insert(key_fields, tostring(value))
end
local command_fields = {}
for name, value in pairs(cjson.decode(ARGV[12])) do
  table.insert(command_fields, name)
  table.insert(command_fields, tostring(value))
end
local function send(device_id)
  local device = ARGV[1] .. device_id
  if redis.call('HGET', device, 'state') ~= rule.from then
    return
  end
  local command_id = ARGV[FIRST + 2 * count]
  local key = ARGV[FIRST + 2 * count + 1]
  local wave = redis.call('HGET', device, 'wave')
  redis.call('HSET', device, 'state', rule.to, 'command_id', command_id, 'sent_at', ARGV[2],
    'updated_at', ARGV[2], 'key', key, 'seen_at', ARGV[2], 'resends', 0)
  redis.call('HINCRBY', device, 'attempts', 1)
  redis.call('HINCRBY', KEYS[4], wave .. names.wave .. rule.from, -1)
  redis.call('HINCRBY', KEYS[4], wave .. names.wave .. rule.to, 1)
  redis.call('HINCRBY', KEYS[4], names.total .. rule.from, -1)
  redis.call('HINCRBY', KEYS[4], names.total .. rule.to, 1)
  redis.call('ZADD', KEYS[5], ARGV[3], device_id)
  redis.call('SADD', KEYS[6], device_id)
  -- The download key (as DownloadKeyStore writes it) and the command record.
  local key_hash = ARGV[5] .. key
  redis.call('HSET', key_hash, 'device_id', device_id, 'command_id', command_id,
    'expires_at_ms', ARGV[10], 'state', 'issued', 'covered', '0', 'claims', '0',
    unpack(key_fields))
  redis.call('PEXPIREAT', key_hash, ARGV[10])
  local device_keys = ARGV[6] .. device_id .. ARGV[7]
  redis.call('SADD', device_keys, key)
  redis.call('EXPIRE', device_keys, ARGV[11])
  local command = ARGV[8] .. command_id
  redis.call('HSET', command, 'device_id', device_id, unpack(command_fields))
  redis.call('EXPIRE', command, ARGV[13])
  table.insert(sent, device_id)
  table.insert(sent, command_id)
  table.insert(sent, key)
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
