-- Move one device of a rollout by one event, with its counters, in one step.
-- KEYS[1] rollout hash, KEYS[2] device hash, KEYS[3] counts hash, KEYS[4] deadlines zset,
-- KEYS[5] retry list
-- ARGV[1] device id, ARGV[2] transitions {from: to} (JSON), ARGV[3] rollout states required
-- (JSON list, [] for any), ARGV[4] now ms, ARGV[5] deadline: '' keep, '-' drop, '+N' N ms
-- after the device's sent_at (now when it has none), else epoch ms,
-- ARGV[6] failure type for a failed state ('' = the state's name), ARGV[7] command id the
-- event answers ('' = no check), ARGV[8] the device field holding it, ARGV[9] more fields to
-- set (JSON object), ARGV[10] retries the plan allows (-1: no retry for this event)
-- Returns {old state, new state, the device's download key} when applied, or
-- {old state, why not}: missing | rollout_state | command_mismatch | no_transition
local state = redis.call('HGET', KEYS[2], 'state')
if not state then
  return {'', 'missing'}
end
local required = cjson.decode(ARGV[3])
if #required > 0 then
  local rollout_state = redis.call('HGET', KEYS[1], 'state')
  local allowed = false
  for _, name in ipairs(required) do
    if name == rollout_state then
      allowed = true
    end
  end
  if not allowed then
    return {state, 'rollout_state'}
  end
end
if ARGV[7] ~= '' and redis.call('HGET', KEYS[2], ARGV[8]) ~= ARGV[7] then
  return {state, 'command_mismatch'}
end
local new = cjson.decode(ARGV[2])[state]
if not new then
  return {state, 'no_transition'}
end
local failed_states = {failed = true, rejected = true, timed_out = true}
local retries = tonumber(ARGV[10])
if (new == 'failed' or new == 'timed_out') and retries >= 0 then
  local attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0')
  if attempts <= retries then
    redis.call('HSET', KEYS[2], 'last_failure', ARGV[6] ~= '' and ARGV[6] or new)
    new = 'pending'
  end
end
if new == 'pending' then
  -- Back to pending (a retry, or the retry event): the cursor has passed it, so queue it.
  redis.call('RPUSH', KEYS[5], ARGV[1])
end
local wave = redis.call('HGET', KEYS[2], 'wave')
redis.call('HINCRBY', KEYS[3], wave .. ':' .. state, -1)
redis.call('HINCRBY', KEYS[3], wave .. ':' .. new, 1)
redis.call('HINCRBY', KEYS[3], 'all:' .. state, -1)
redis.call('HINCRBY', KEYS[3], 'all:' .. new, 1)
if failed_states[state] then
  local previous = redis.call('HGET', KEYS[2], 'failure')
  if previous then
    redis.call('HINCRBY', KEYS[3], 'fail:' .. previous, -1)
    redis.call('HDEL', KEYS[2], 'failure')
  end
end
if failed_states[new] then
  local failure = ARGV[6] ~= '' and ARGV[6] or new
  redis.call('HSET', KEYS[2], 'failure', failure)
  redis.call('HINCRBY', KEYS[3], 'fail:' .. failure, 1)
end
redis.call('HSET', KEYS[2], 'state', new, 'updated_at', ARGV[4])
for name, value in pairs(cjson.decode(ARGV[9])) do
  redis.call('HSET', KEYS[2], name, tostring(value))
end
if ARGV[5] == '-' then
  redis.call('ZREM', KEYS[4], ARGV[1])
elseif string.sub(ARGV[5], 1, 1) == '+' then
  local sent_at = tonumber(redis.call('HGET', KEYS[2], 'sent_at') or ARGV[4]) or tonumber(ARGV[4])
  redis.call('ZADD', KEYS[4], sent_at + tonumber(string.sub(ARGV[5], 2)), ARGV[1])
elseif ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
end
return {state, new, redis.call('HGET', KEYS[2], 'key') or ''}
