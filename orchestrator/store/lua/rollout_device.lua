-- Move devices of rollouts by one event each, with their counters, in one step, in order.
-- A device that reaches `succeeded` has its download key revoked: the key has done its work.
-- An event that answers a command (command id given and matching) also records the device's
-- last sign of life (`seen_at`, and `resends` back to 0), applied or not.
-- KEYS[1] only routes the call to the node of the prefix's slot (Redis Cluster).
-- ARGV[1] is the entry point, ARGV[2] now ms, ARGV[3] download key hash prefix.
--
-- 'events': then 14 values per event:
--   1 rollout hash, 2 device hash, 3 counts hash, 4 deadlines zset, 5 retry list,
--   6 device id, 7 transitions {from: to} (JSON), 8 rollout states required (JSON list, [] for
--   any), 9 deadline: '' keep, '-' drop, '+N' N ms after the device's sent_at (now when it has
--   none), else epoch ms, 10 failure type for a failed state ('' = the state's name),
--   11 command id the event answers ('' = no check), 12 the device field holding it,
--   13 more fields to set (JSON object), 14 retries the plan allows (-1: no retry for this
--   event)
-- Returns, per event, {old state, new state, the device's download key} when applied, or
-- {old state, why not, ''}: missing | rollout_state | command_mismatch | no_transition
--
-- 'results': device results, each matched to its command record and turned into an event by
-- its rollout's rules. ARGV[4] command record key prefix, ARGV[5] the results as one JSON list
-- of [command id, device id, status, version ('' when none)] (one argument rather than four
-- per result: packing arguments is a large part of the caller's work), ARGV[6] the registry's
-- device record key prefix, ARGV[7] its last_seen field, ARGV[8] the seconds between two
-- last_seen writes, then pairs of (rollout id, rules JSON, '' when there is no such rollout).
-- A result on the topic of the device its command went to is word from that device: its
-- registry record's last_seen becomes now (in seconds) when it is that much older. Rules JSON:
--   {"keys": {"rollout", "device" (prefix of device hashes), "counts", "deadlines", "retry"},
--    "events": {name: {"transitions", "deadline", "failure", "field", "extra", "retries"}},
--    "kinds": {command kind: status rules}, "default": status rules}
--   status rules: {"version": expected ('' = any), "matched": {status: event name},
--                  "mismatched": {status: event name}}  (mismatched: another version reported)
-- First every record is read; when a result names a rollout not among the K, nothing is
-- written and the reply is {'needed', rollout id, ...}. Otherwise the events are applied in
-- order, each rollout heard from gets `last_result_ms` = now, and the reply is, per result,
-- {outcome, command, sent_at, rollout id, event, detail}; outcome: applied | unknown_command |
-- wrong_device (detail: the device the command went to) | no_rollout | unknown_rollout |
-- no_event | a refusal above (detail: the device's state).
local mode = ARGV[1]
local now = ARGV[2]
local key_prefix = ARGV[3]
local failed_states = {failed = true, rejected = true, timed_out = true}

-- Counter changes, summed over the call and written at its end: {counts hash: {field: delta}}.
-- Nothing in the call reads the counters, and every field touched is written (even by 0).
local deltas = {}
local function count(counts, name, delta)
  local by_name = deltas[counts]
  if not by_name then
    by_name = {}
    deltas[counts] = by_name
  end
  by_name[name] = (by_name[name] or 0) + delta
end

local function write_counts()
  for counts, by_name in pairs(deltas) do
    for name, delta in pairs(by_name) do
      redis.call('HINCRBY', counts, name, delta)
    end
  end
end

-- e: rollout, device, counts, deadlines, retry (keys), device_id, transitions (table),
-- states (table or nil), deadline, failure, command_id, field, extra (table or nil), retries
local function apply(e)
  local device, counts, device_id = e.device, e.counts, e.device_id
  local got = redis.call(
    'HMGET', device, 'state', 'wave', 'key', 'sent_at', 'attempts', 'failure', e.field
  )
  local state = got[1]
  if not state then
    return {'', 'missing', ''}
  end
  if e.extra and e.extra.downloaded and (e.command_id == '' or got[7] == e.command_id) then
    -- That the device fetched the firmware stays true whatever the event does to its state:
    -- a key claim heard after the device's failure must still bring it the rollback.
    redis.call('HSET', device, 'downloaded', tostring(e.extra.downloaded))
  end
  if e.states then
    local rollout_state = redis.call('HGET', e.rollout, 'state')
    local allowed = false
    for _, name in ipairs(e.states) do
      if name == rollout_state then
        allowed = true
      end
    end
    if not allowed then
      return {state, 'rollout_state', ''}
    end
  end
  if e.command_id ~= '' and got[7] ~= e.command_id then
    return {state, 'command_mismatch', ''}
  end
  if e.command_id ~= '' then
    -- The device spoke about its command (a result, a key use): a sign of life, even when it
    -- moves nothing. The driver sends the command again only after a silence.
    redis.call('HSET', device, 'seen_at', now, 'resends', 0)
  end
  local new = e.transitions[state]
  if not new then
    return {state, 'no_transition', ''}
  end
  local changes = {}
  if (new == 'failed' or new == 'timed_out') and e.retries >= 0 then
    local attempts = tonumber(got[5] or '0')
    if attempts <= e.retries then
      table.insert(changes, 'last_failure')
      table.insert(changes, e.failure ~= '' and e.failure or new)
      new = 'pending'
    end
  end
  if new == 'pending' then
    -- Back to pending (a retry, or the retry event): the cursor has passed it, so queue it.
    redis.call('RPUSH', e.retry, device_id)
  end
  local wave = got[2]
  count(counts, wave .. ':' .. state, -1)
  count(counts, wave .. ':' .. new, 1)
  count(counts, 'all:' .. state, -1)
  count(counts, 'all:' .. new, 1)
  if failed_states[state] then
    local previous = got[6]
    if previous then
      count(counts, 'fail:' .. previous, -1)
      redis.call('HDEL', device, 'failure')
    end
  end
  if failed_states[new] then
    local failure = e.failure ~= '' and e.failure or new
    table.insert(changes, 'failure')
    table.insert(changes, failure)
    count(counts, 'fail:' .. failure, 1)
  end
  table.insert(changes, 'state')
  table.insert(changes, new)
  table.insert(changes, 'updated_at')
  table.insert(changes, now)
  if e.extra then
    for name, value in pairs(e.extra) do
      table.insert(changes, name)
      table.insert(changes, tostring(value))
    end
  end
  redis.call('HSET', device, unpack(changes))
  local deadline = e.deadline
  if deadline == '-' then
    redis.call('ZREM', e.deadlines, device_id)
  elseif string.sub(deadline, 1, 1) == '+' then
    local sent_at = tonumber(got[4] or now) or tonumber(now)
    redis.call('ZADD', e.deadlines, sent_at + tonumber(string.sub(deadline, 2)), device_id)
  elseif deadline ~= '' then
    redis.call('ZADD', e.deadlines, deadline, device_id)
  end
  local key = got[3] or ''
  if new == 'succeeded' and key ~= '' then
    redis.call('DEL', key_prefix .. key)
  end
  return {state, new, key}
end

local function events()
  local outcomes = {}
  local width = 14
  for first = 4, #ARGV, width do
    local a = {}
    for i = 1, width do
      a[i] = ARGV[first + i - 1]
    end
    local extra = nil
    if a[13] ~= '{}' then
      extra = cjson.decode(a[13])
    end
    local states = nil
    if a[8] ~= '[]' then
      states = cjson.decode(a[8])
    end
    table.insert(outcomes, apply({
      rollout = a[1], device = a[2], counts = a[3], deadlines = a[4], retry = a[5],
      device_id = a[6], transitions = cjson.decode(a[7]), states = states, deadline = a[9],
      failure = a[10], command_id = a[11], field = a[12], extra = extra,
      retries = tonumber(a[14]),
    }))
  end
  write_counts()
  return outcomes
end

-- The registry record of a device the service heard from (never made when missing).
local function seen(key, field, now_s, every_s)
  local at = redis.call('HGET', key, field)
  if at then
    if now_s - (tonumber(at) or 0) < every_s then
      return
    end
  elseif redis.call('EXISTS', key) == 0 then
    return
  end
  redis.call('HSET', key, field, now_s)
end

local function results()
  local command_prefix = ARGV[4]
  local reported = cjson.decode(ARGV[5])
  local registry, seen_field, seen_every_s = ARGV[6], ARGV[7], tonumber(ARGV[8])
  local now_s = math.floor(tonumber(now) / 1000)
  local given = {}  -- rollout id -> rules JSON ('' = no such rollout)
  for at = 9, #ARGV, 2 do
    given[ARGV[at]] = ARGV[at + 1]
  end
  -- Read every record first: a rollout without rules means no write at all.
  local found = {}
  local needed, needed_seen = {}, {}
  for n, result in ipairs(reported) do
    local record = redis.call(
      'HMGET', command_prefix .. result[1], 'device_id', 'command', 'rollout_id', 'kind', 'sent_at'
    )
    found[n] = record
    local rollout_id = record[3]
    if record[1] == result[2] and rollout_id and rollout_id ~= '' then
      if given[rollout_id] == nil and not needed_seen[rollout_id] then
        needed_seen[rollout_id] = true
        table.insert(needed, rollout_id)
      end
    end
  end
  if #needed > 0 then
    table.insert(needed, 1, 'needed')
    return needed
  end
  local rules = {}  -- rollout id -> decoded rules, or false
  local heard = {}
  local outcomes = {}
  for n, result in ipairs(reported) do
    local record = found[n]
    local command_id, device_id, status, version = result[1], result[2], result[3], result[4]
    local sent_to, command, rollout_id = record[1], record[2] or '', record[3] or ''
    local sent_at = record[5] or ''
    if sent_to == device_id then
      seen(registry .. device_id, seen_field, now_s, seen_every_s)
    end
    local reply
    if not (record[1] or record[2] or record[3] or record[4] or record[5]) then
      reply = {'unknown_command', '', '', '', '', ''}
    elseif sent_to ~= device_id then
      reply = {'wrong_device', '', '', '', '', sent_to or ''}
    elseif rollout_id == '' then
      reply = {'no_rollout', command, sent_at, '', '', ''}
    else
      local spec = rules[rollout_id]
      if spec == nil then
        spec = given[rollout_id] ~= '' and cjson.decode(given[rollout_id])
        rules[rollout_id] = spec
      end
      if not spec then
        reply = {'unknown_rollout', command, sent_at, rollout_id, '', ''}
      else
        heard[rollout_id] = spec.keys.rollout
        local by_status = spec.kinds[record[4] or ''] or spec.default
        local names = by_status.mismatched
        if by_status.version == '' or version == by_status.version then
          names = by_status.matched
        end
        local name = names[status]
        if not name then
          reply = {'no_event', command, sent_at, rollout_id, '', ''}
        else
          local event = spec.events[name]
          local keys = spec.keys
          local done = apply({
            rollout = keys.rollout, device = keys.device .. device_id, counts = keys.counts,
            deadlines = keys.deadlines, retry = keys.retry, device_id = device_id,
            transitions = event.transitions, deadline = event.deadline,
            failure = event.failure, command_id = command_id, field = event.field,
            extra = next(event.extra) and event.extra or nil, retries = event.retries,
          })
          if done[2] == 'missing' or done[2] == 'rollout_state'
              or done[2] == 'command_mismatch' or done[2] == 'no_transition' then
            reply = {done[2], command, sent_at, rollout_id, name, done[1]}
          else
            reply = {'applied', command, sent_at, rollout_id, name, done[2]}
          end
        end
      end
    end
    outcomes[n] = reply
  end
  for _, rollout in pairs(heard) do
    -- Not for a rollout deleted after its retention (its rules may still be at hand).
    if redis.call('EXISTS', rollout) == 1 then
      redis.call('HSET', rollout, 'last_result_ms', now)
    end
  end
  write_counts()
  return outcomes
end

if mode == 'results' then
  return results()
end
return events()
