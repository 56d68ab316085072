-- Create a rollout with its cohort, atomically: the name and every device must be free, and
-- the project's deletion must not have begun.
-- KEYS[1] rollout hash, KEYS[2] order list, KEYS[3] counts hash, KEYS[4] project rollouts zset,
-- KEYS[5] active rollouts set, KEYS[6] name key, KEYS[7] events list, KEYS[8] the project's
-- deletion record
-- ARGV[1] rollout id, ARGV[2] device hash prefix, ARGV[3] device lock prefix, ARGV[4] created ms,
-- ARGV[5] rollout fields (JSON object), ARGV[6] wave reach (JSON list), ARGV[7] event (JSON),
-- ARGV[8] counter names (JSON: {"total": prefix, "wave": between wave number and state}, from
-- domain/counters.py), ARGV[9] the state devices start in, ARGV[10] each device's stratum
-- index (JSON list in device order; [] without strata), ARGV[11..] device ids in wave order
-- Returns {'ok'} | {'exists'} | {'project_deleting'} | {'name_taken', other rollout id} |
-- {'devices_taken', id, ...}
local rid = ARGV[1]
local FIRST = 11
local names = cjson.decode(ARGV[8])
local state = ARGV[9]
local strata = cjson.decode(ARGV[10])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
if redis.call('EXISTS', KEYS[8]) == 1 then
  return {'project_deleting'}
end
local holder = redis.call('GET', KEYS[6])
if holder then
  return {'name_taken', holder}
end
local taken = {'devices_taken'}
for i = FIRST, #ARGV do
  if redis.call('EXISTS', ARGV[3] .. ARGV[i] .. ':rollout') == 1 then
    table.insert(taken, ARGV[i])
  end
end
if #taken > 1 then
  return taken
end
local fields = cjson.decode(ARGV[5])
for name, value in pairs(fields) do
  redis.call('HSET', KEYS[1], name, tostring(value))
end
local reach = cjson.decode(ARGV[6])
local wave = 0
for i = FIRST, #ARGV do
  local position = i - FIRST
  while wave < #reach - 1 and position >= reach[wave + 1] do
    wave = wave + 1
  end
  redis.call('HSET', ARGV[2] .. ARGV[i], 'state', state, 'wave', wave, 'attempts', 0)
  local stratum = strata[position + 1]
  if stratum then
    redis.call('HSET', ARGV[2] .. ARGV[i], 'stratum', stratum)
  end
  redis.call('SET', ARGV[3] .. ARGV[i] .. ':rollout', rid)
  redis.call('HINCRBY', KEYS[3], wave .. names.wave .. state, 1)
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
redis.call('HSET', KEYS[3], names.total .. state, #ARGV - FIRST + 1)
redis.call('SET', KEYS[6], rid)
redis.call('ZADD', KEYS[4], ARGV[4], rid)
redis.call('SADD', KEYS[5], rid)
redis.call('RPUSH', KEYS[7], ARGV[7])
return {'ok'}
