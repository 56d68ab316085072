-- Change a rollout's state if it is in one of the given states, and record why.
-- KEYS[1] rollout hash, KEYS[2] events list, KEYS[3] active set (unused), KEYS[4] name key,
-- KEYS[5] counts hash, KEYS[6] notices stream (read by the notifier), KEYS[7] cohort order
-- list, KEYS[8] deadlines zset, KEYS[9] retry list, KEYS[10] unpublished set
-- ARGV[1] states it may leave (JSON list), ARGV[2] new state, ARGV[3] reason,
-- ARGV[4] event (JSON object; "from" is filled in here), ARGV[5] updated_at,
-- ARGV[6] '1' when the new state is terminal, ARGV[7] rollout id, ARGV[8] more fields (JSON),
-- ARGV[9] '1' to judge the policy from here on: the finished devices so far become the
-- baseline (the counters ARGV[18] names) that the failure rate leaves out (a person resumed a
-- halt),
-- ARGV[10] notices kept in the stream (approximately), ARGV[11] {state: new state} for
-- devices not final when the rollout ends (JSON, the domain's `end` event), ARGV[12] device
-- hash prefix, ARGV[13] download key hash prefix, ARGV[14] device lock prefix, ARGV[15] now ms,
-- ARGV[17] counter names (JSON: {"total": prefix, "wave": between wave number and state}),
-- ARGV[18] what a rebase keeps (JSON: {counter: where its value goes}); both from
-- domain/counters.py; ARGV[19] what else a rebase keeps (JSON: {"prefixes": [the prefix of the
-- counters' names], "base": prefix of where each goes}), the strata's counters,
-- ARGV[20] audit entries that come just before the change's own (a JSON list of JSON objects,
-- each written as it is: a wave passed into a wave that waits for approval), ARGV[21] the
-- state the change's own entry says it left ('': the state it found; a note before it
-- records the step that led there, as when a start goes straight on to wait for approval)
-- Returns {old state, new state, devices ended} or {old state, ''} when the state did not
-- allow it.
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
for _, note in ipairs(cjson.decode(ARGV[20] or '[]')) do
  redis.call('RPUSH', KEYS[2], note)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'rollout_id', ARGV[7], 'event', note)
end
-- Splice "from" into the caller's JSON rather than decode and re-encode it: cjson would turn
-- an empty list in the details into {} and cut numbers to 14 significant digits.
local from = state
if ARGV[21] and ARGV[21] ~= '' then
  from = ARGV[21]
end
local event = '{"from":' .. cjson.encode(from) .. ',' .. string.sub(ARGV[4], 2)
redis.call('RPUSH', KEYS[2], event)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'rollout_id', ARGV[7], 'event', event)
if ARGV[9] == '1' then
  for name, base in pairs(cjson.decode(ARGV[18])) do
    local value = redis.call('HGET', KEYS[5], name)
    if value then
      redis.call('HSET', KEYS[5], base, value)
    end
  end
  local kept = cjson.decode(ARGV[19] or '{"prefixes": []}')
  if #kept.prefixes > 0 then
    local counts = redis.call('HGETALL', KEYS[5])
    for at = 1, #counts, 2 do
      local name = counts[at]
      for _, prefix in ipairs(kept.prefixes) do
        if string.sub(name, 1, #prefix) == prefix then
          redis.call('HSET', KEYS[5], kept.base .. name, counts[at + 1])
        end
      end
    end
  end
end
-- A terminal rollout ends in this one step: its name is free, every device it still tracked is
-- cancelled (its download keys revoked), every device is free for the next rollout, and the
-- engine has nothing left to do. No reader sees a finished rollout with devices in flight.
local ended = 0
if ARGV[6] == '1' then
  if redis.call('GET', KEYS[4]) == ARGV[7] then
    redis.call('DEL', KEYS[4])
  end
  local ends = cjson.decode(ARGV[11])
  local device_prefix, key_prefix, lock_prefix, now = ARGV[12], ARGV[13], ARGV[14], ARGV[15]
  local names = cjson.decode(ARGV[17])
  local deltas = {}
  local function count(name, delta)
    deltas[name] = (deltas[name] or 0) + delta
  end
  for _, device_id in ipairs(redis.call('LRANGE', KEYS[7], 0, -1)) do
    local device = device_prefix .. device_id
    local got = redis.call('HMGET', device, 'state', 'wave', 'key', 'rollback_key')
    local new = got[1] and ends[got[1]]
    if new then
      count(got[2] .. names.wave .. got[1], -1)
      count(got[2] .. names.wave .. new, 1)
      count(names.total .. got[1], -1)
      count(names.total .. new, 1)
      redis.call('HSET', device, 'state', new, 'updated_at', now)
      for _, key in ipairs({got[3], got[4]}) do
        if key and key ~= '' then
          redis.call('DEL', key_prefix .. key)
        end
      end
      ended = ended + 1
    end
    local lock = lock_prefix .. device_id .. ':rollout'
    if redis.call('GET', lock) == ARGV[7] then
      redis.call('DEL', lock)
    end
  end
  for name, delta in pairs(deltas) do
    redis.call('HINCRBY', KEYS[5], name, delta)
  end
  redis.call('DEL', KEYS[8], KEYS[9], KEYS[10])
  redis.call('SREM', KEYS[3], ARGV[7])
end
-- Retention: a terminal rollout joins the finished index, scored by when it finished; the
-- engine deletes it, every key of it, once OTA_ROLLOUT_RETENTION has passed
-- (store/retention.py). KEYS[11] finished rollouts zset, ARGV[16] when it finished (epoch ms).
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[11], 'NX', ARGV[16], ARGV[7])
end
return {state, ARGV[2], ended}
