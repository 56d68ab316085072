-- Change a rollout's state if it is in one of the given states, and record why.
-- KEYS[1] rollout hash, KEYS[2] events list, KEYS[3] active set (unused), KEYS[4] name key,
-- KEYS[5] counts hash, KEYS[6] notices stream (read by the notifier)
-- ARGV[1] states it may leave (JSON list), ARGV[2] new state, ARGV[3] reason,
-- ARGV[4] event (JSON object; "from" is filled in here), ARGV[5] updated_at,
-- ARGV[6] '1' when the new state is terminal, ARGV[7] rollout id, ARGV[8] more fields (JSON),
-- ARGV[9] '1' to judge the policy from here on: the finished devices so far become the
-- baseline (`base:` counters) that the failure rate leaves out (a person resumed a halt),
-- ARGV[10] notices kept in the stream (approximately)
-- Returns {old state, new state} or {old state, ''} when the state did not allow it.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'', ''}
end
local allowed = false
for _, name in ipairs(cjson.decode(ARGV[1])) do
  if name == state then
    allowed = true
  end
end
if not allowed then
  return {state, ''}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3], 'updated_at', ARGV[5])
for name, value in pairs(cjson.decode(ARGV[8])) do
  redis.call('HSET', KEYS[1], name, tostring(value))
end
-- Splice "from" into the caller's JSON rather than decode and re-encode it: cjson would turn
-- an empty list in the details into {} and cut numbers to 14 significant digits.
local event = '{"from":' .. cjson.encode(state) .. ',' .. string.sub(ARGV[4], 2)
redis.call('RPUSH', KEYS[2], event)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'rollout_id', ARGV[7], 'event', event)
if ARGV[9] == '1' then
  local counts = redis.call('HGETALL', KEYS[5])
  for i = 1, #counts, 2 do
    local name = counts[i]
    if name == 'all:succeeded' or string.sub(name, 1, 5) == 'fail:' then
      redis.call('HSET', KEYS[5], 'base:' .. name, counts[i + 1])
    end
  end
end
-- A terminal rollout frees its name at once; it leaves the active set only when the engine
-- has cancelled what never started and freed its devices (RolloutStore.deactivate).
if ARGV[6] == '1' then
  if redis.call('GET', KEYS[4]) == ARGV[7] then
    redis.call('DEL', KEYS[4])
  end
end
return {state, ARGV[2]}
