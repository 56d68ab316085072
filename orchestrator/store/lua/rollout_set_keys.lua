-- Record a new download key on each device still waiting for the command it was issued for,
-- in one step: a device that finished (or moved on) meanwhile keeps the key it used.
-- KEYS[i] the device's rollout hash
-- ARGV[1] key field (key | rollback_key), ARGV[2] command id field (command_id |
-- rollback_command_id), ARGV[3] JSON list of the states in which a device waits,
-- ARGV[2 + 2i] the command id, ARGV[3 + 2i] the key, for KEYS[i]
-- Returns one 1 (recorded) or 0 (the device no longer waits: revoke the key) per device.
local waiting = {}
for _, state in ipairs(cjson.decode(ARGV[3])) do
  waiting[state] = true
end
local recorded = {}
for i, device in ipairs(KEYS) do
  local f = redis.call('HMGET', device, 'state', ARGV[2])
  if f[1] and waiting[f[1]] and f[2] == ARGV[2 + 2 * i] then
    redis.call('HSET', device, ARGV[1], ARGV[3 + 2 * i])
    table.insert(recorded, 1)
  else
    table.insert(recorded, 0)
  end
end
return recorded
