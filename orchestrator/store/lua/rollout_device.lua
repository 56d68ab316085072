-- Move devices of rollouts by one event each, with their counters, in one step, in order.
-- A device that reaches `succeeded` has its download key revoked: the key has done its work.
-- KEYS[1] only routes the call to the node of the prefix's slot (Redis Cluster).
-- ARGV[1] now ms, ARGV[2] download key hash prefix, then 14 values per event:
--   1 rollout hash, 2 device hash, 3 counts hash, 4 deadlines zset, 5 retry list,
--   6 device id, 7 transitions {from: to} (JSON), 8 rollout states required (JSON list, [] for
--   any), 9 deadline: '' keep, '-' drop, '+N' N ms after the device's sent_at (now when it has
--   none), else epoch ms, 10 failure type for a failed state ('' = the state's name),
--   11 command id the event answers ('' = no check), 12 the device field holding it,
--   13 more fields to set (JSON object), 14 retries the plan allows (-1: no retry for this
--   event)
-- Returns, per event, {old state, new state, the device's download key} when applied, or
-- {old state, why not, ''}: missing | rollout_state | command_mismatch | no_transition
local now = ARGV[1]
local key_prefix = ARGV[2]
local failed_states = {failed = true, rejected = true, timed_out = true}

local function apply(a)
  local rollout, device, counts, deadlines, retry = a[1], a[2], a[3], a[4], a[5]
  local device_id = a[6]
  local state = redis.call('HGET', device, 'state')
  if not state then
    return {'', 'missing', ''}
  end
  if a[8] ~= '[]' then
    local rollout_state = redis.call('HGET', rollout, 'state')
    local allowed = false
    for _, name in ipairs(cjson.decode(a[8])) do
      if name == rollout_state then
        allowed = true
      end
    end
    if not allowed then
      return {state, 'rollout_state', ''}
    end
  end
  if a[11] ~= '' and redis.call('HGET', device, a[12]) ~= a[11] then
    return {state, 'command_mismatch', ''}
  end
  local new = cjson.decode(a[7])[state]
  if not new then
    return {state, 'no_transition', ''}
  end
  local retries = tonumber(a[14])
  if (new == 'failed' or new == 'timed_out') and retries >= 0 then
    local attempts = tonumber(redis.call('HGET', device, 'attempts') or '0')
    if attempts <= retries then
      redis.call('HSET', device, 'last_failure', a[10] ~= '' and a[10] or new)
      new = 'pending'
    end
  end
  if new == 'pending' then
    -- Back to pending (a retry, or the retry event): the cursor has passed it, so queue it.
    redis.call('RPUSH', retry, device_id)
  end
  local wave = redis.call('HGET', device, 'wave')
  redis.call('HINCRBY', counts, wave .. ':' .. state, -1)
  redis.call('HINCRBY', counts, wave .. ':' .. new, 1)
  redis.call('HINCRBY', counts, 'all:' .. state, -1)
  redis.call('HINCRBY', counts, 'all:' .. new, 1)
  if failed_states[state] then
    local previous = redis.call('HGET', device, 'failure')
    if previous then
      redis.call('HINCRBY', counts, 'fail:' .. previous, -1)
      redis.call('HDEL', device, 'failure')
    end
  end
  if failed_states[new] then
    local failure = a[10] ~= '' and a[10] or new
    redis.call('HSET', device, 'failure', failure)
    redis.call('HINCRBY', counts, 'fail:' .. failure, 1)
  end
  redis.call('HSET', device, 'state', new, 'updated_at', now)
  if a[13] ~= '{}' then
    for name, value in pairs(cjson.decode(a[13])) do
      redis.call('HSET', device, name, tostring(value))
    end
  end
  local deadline = a[9]
  if deadline == '-' then
    redis.call('ZREM', deadlines, device_id)
  elseif string.sub(deadline, 1, 1) == '+' then
    local sent_at = tonumber(redis.call('HGET', device, 'sent_at') or now) or tonumber(now)
    redis.call('ZADD', deadlines, sent_at + tonumber(string.sub(deadline, 2)), device_id)
  elseif deadline ~= '' then
    redis.call('ZADD', deadlines, deadline, device_id)
  end
  local key = redis.call('HGET', device, 'key') or ''
  if new == 'succeeded' and key ~= '' then
    redis.call('DEL', key_prefix .. key)
  end
  return {state, new, key}
end

local outcomes = {}
local WIDTH = 14
for first = 3, #ARGV, WIDTH do
  local a = {}
  for i = 1, WIDTH do
    a[i] = ARGV[first + i - 1]
  end
  table.insert(outcomes, apply(a))
end
return outcomes
