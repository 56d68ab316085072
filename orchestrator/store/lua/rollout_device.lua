-- Move devices of rollouts by one event each, with their counters, in one step, in order.
-- The script holds no rule of its own: the caller compiles the domain's (store/script_rules.py)
-- and each event's spec (store/device_events.py) into the arguments.
-- An event that answers a command (command id given and matching) also records the device's
-- last sign of life (`seen_at`, and `resends` back to 0) and sets the spec's marks, applied or
-- not.
-- KEYS[1] only routes the call to the node of the prefix's slot (Redis Cluster).
-- ARGV[1] the entry point: events | due | results, ARGV[2] now ms, ARGV[3] download key hash
-- prefix, ARGV[4] the domain's rules (JSON):
--   {"failed": {state: true}, "retried": {failed state: where a retry takes it},
--    "queued": {state: true} (entering one queues the device in the retry list),
--    "spent": {state: true} (reaching one revokes the device's download key),
--    "counters": {"total": prefix, "wave": between wave number and state, "fail": prefix,
--    "stratum": prefix, "stratum_fail": prefix, "stratified": {state: true} (counted per
--    stratum)}}
-- A device of a rollout with strata (`policy.by`) has the field `stratum`, an index (from 0)
-- into the JSON list of label lists in its rollout hash's field `strata`; every counter change
-- of a `stratified` state or of a failure type is made for each of its labels too.
-- ARGV[5] the entry point's work (JSON, below), then pairs of (rollout id, rollout JSON, '' when
-- there is no such rollout): {"keys": {"rollout", "device" (prefix of device hashes),
-- "counts", "deadlines", "retry", "unpublished"}, ...}.
--
-- An event spec (JSON object):
--   {"transitions": {from: to}, "states": rollout states required ([] for any),
--    "deadline": '' keep | '-' drop | '+N' N ms after the device's sent_at (now when it has
--    none) | 'hN' N ms from now, but no later than the device's `soak_until` | epoch ms,
--    "soak": N > 0 to set the device's `soak_until` to now + N ms when applied (before its
--    deadline is set), "failure": the failure type of a failed state it reaches,
--    "field": the device field holding the command id answered, "extra": fields set when
--    applied, "marks": fields set when the command matches (applied or not), "attempts": sends
--    a failing device may have had and still be retried, "revoke": true to revoke the device's
--    download key when applied, "unpublished": true to mark its command unpublished when applied}
-- An event's outcome: {old state, new state, the device's download key} when applied, or
-- {old state, why not, ''}: missing | rollout_state | command_mismatch | no_transition
--
-- 'events': ARGV[5] {"specs": [spec, ...], "events": [[rollout id, device id, spec index (from
-- 0), command id it answers ('' = no check), fields set when applied (optional)], ...]}.
-- Returns the outcome of each event.
--
-- 'due': ARGV[5] {"spec": spec, "at": epoch ms, "limit": n, "soak"?: {"states": {state:
-- true}, "field": name, "over": spec, "silent": spec, "hold": bool}}, one rollout. Each device
-- whose deadline is at or before `at`, soonest first, up to `limit`, gets the spec's event and
-- loses its deadline, applied or not; a device in one of the soak's states gets `over` when its
-- deadline was at or after its `field` (the soak's end), else `silent`, or, with `hold`, is
-- left as it is, deadline included. Returns {device id, outcome...} for each device dealt with.
--
-- 'results': ARGV[5] {"commands": command record key prefix, "results": [[command id, device
-- id, status, version ('' when none), error ('' when none)], ...], "registry": the registry's device record key
-- prefix, "seen_field": its last_seen field, "seen_every_s": seconds between two last_seen
-- writes}. A result on the topic of the device its command went to is word from that device:
-- its registry record's last_seen becomes now (in seconds) when it is that much older. With
-- "version_field", "version_at_field" and "version_statuses" ({status: true}), such a result of
-- one of those statuses carrying a version also records it in the registry record, and now (in
-- seconds) as when, unless the record holds a later report. Each result is matched to its command record and turned into an event by its rollout's
-- rules. The rollout JSON adds {"events": {name: spec}, "kinds": {command kind: status rules},
-- "default": status rules}; status rules: {"version": expected ('' = any), "matched": {status:
-- event name}, "mismatched": {status: event name} (another version reported), "unversioned"?:
-- {status: event name} (none reported; mismatched when absent)}. An applied result's error, if
-- any, is kept in the device's `error`.
-- First every record is read; when a result names a rollout not among the pairs, nothing is
-- written and the reply is {'needed', rollout id, ...}. Otherwise the events are applied in
-- order, each rollout heard from gets `last_result_ms` = now, and the reply is, per result,
-- {outcome, command, sent_at, rollout id, event, detail}; outcome: applied | unknown_command |
-- wrong_device (detail: the device the command went to) | no_rollout | unknown_rollout |
-- no_event | a refusal above (detail: the device's state).
local mode = ARGV[1]
local now = ARGV[2]
local key_prefix = ARGV[3]
local rules = cjson.decode(ARGV[4])
local failed, retried, queued, spent = rules.failed, rules.retried, rules.queued, rules.spent
local names = rules.counters
local stratified = names.stratified or {}

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

-- The stratum labels of a device of the rollout hash `rollout` ({} without strata), by the
-- index its record holds; each rollout's label lists are read once per call.
local strata_of = {}
local function labels_of(rollout, index)
  if not index or index == '' then
    return {}
  end
  local lists = strata_of[rollout]
  if not lists then
    lists = cjson.decode(redis.call('HGET', rollout, 'strata') or '[]')
    strata_of[rollout] = lists
  end
  return lists[tonumber(index) + 1] or {}
end

-- Append the fields of `fields` (a table, or nil) to the flat list `flat`.
local function append(flat, fields)
  if fields then
    for name, value in pairs(fields) do
      table.insert(flat, name)
      table.insert(flat, tostring(value))
    end
  end
  return flat
end

-- The rollouts named by the pairs after ARGV[5]: rollout id -> JSON text ('' = none).
local function given_rollouts()
  local given = {}
  for at = 6, #ARGV, 2 do
    given[ARGV[at]] = ARGV[at + 1]
  end
  return given
end

-- Apply `spec` to one device of the rollout with keys `k`; `extra`: more fields when applied.
local function apply(k, device_id, spec, command_id, extra)
  local device = k.device .. device_id
  local got = redis.call(
    'HMGET', device, 'state', 'wave', 'key', 'sent_at', 'attempts', 'failure', spec.field,
    'stratum', 'soak_until'
  )
  local state = got[1]
  if not state then
    return {'', 'missing', ''}
  end
  local answers = command_id == '' or got[7] == command_id
  if answers and next(spec.marks) then
    -- What the marks say stays true whatever the event does to the state: a key claim heard
    -- after the device's failure must still bring it the rollback.
    redis.call('HSET', device, unpack(append({}, spec.marks)))
  end
  if #spec.states > 0 then
    local rollout_state = redis.call('HGET', k.rollout, 'state')
    local allowed = false
    for _, name in ipairs(spec.states) do
      if name == rollout_state then
        allowed = true
      end
    end
    if not allowed then
      return {state, 'rollout_state', ''}
    end
  end
  if not answers then
    return {state, 'command_mismatch', ''}
  end
  if command_id ~= '' then
    -- The device spoke about its command (a result, a key use): a sign of life, even when it
    -- moves nothing. The driver sends the command again only after a silence.
    redis.call('HSET', device, 'seen_at', now, 'resends', 0)
  end
  local new = spec.transitions[state]
  if not new then
    return {state, 'no_transition', ''}
  end
  local changes = {}
  local back = retried[new]
  if back and tonumber(got[5] or '0') < spec.attempts then
    table.insert(changes, 'last_failure')
    table.insert(changes, spec.failure)
    new = back
  end
  if queued[new] then
    -- The cursor has passed it: the retry list brings it back to dispatch.
    redis.call('RPUSH', k.retry, device_id)
  end
  local wave = got[2]
  count(k.counts, wave .. names.wave .. state, -1)
  count(k.counts, wave .. names.wave .. new, 1)
  count(k.counts, names.total .. state, -1)
  count(k.counts, names.total .. new, 1)
  local labels = labels_of(k.rollout, got[8])
  for _, label in ipairs(labels) do
    if stratified[state] then
      count(k.counts, names.stratum .. state .. names.wave .. label, -1)
    end
    if stratified[new] then
      count(k.counts, names.stratum .. new .. names.wave .. label, 1)
    end
  end
  if failed[state] then
    local previous = got[6]
    if previous then
      count(k.counts, names.fail .. previous, -1)
      for _, label in ipairs(labels) do
        count(k.counts, names.stratum_fail .. previous .. names.wave .. label, -1)
      end
      redis.call('HDEL', device, 'failure')
    end
  end
  if failed[new] then
    table.insert(changes, 'failure')
    table.insert(changes, spec.failure)
    count(k.counts, names.fail .. spec.failure, 1)
    for _, label in ipairs(labels) do
      count(k.counts, names.stratum_fail .. spec.failure .. names.wave .. label, 1)
    end
  end
  local soak_until = tonumber(got[9] or '')
  if (spec.soak or 0) > 0 then
    soak_until = tonumber(now) + spec.soak
    table.insert(changes, 'soak_until')
    table.insert(changes, soak_until)
  end
  table.insert(changes, 'state')
  table.insert(changes, new)
  table.insert(changes, 'updated_at')
  table.insert(changes, now)
  redis.call('HSET', device, unpack(append(append(changes, spec.extra), extra)))
  local deadline = spec.deadline
  if deadline == '-' then
    redis.call('ZREM', k.deadlines, device_id)
  elseif string.sub(deadline, 1, 1) == '+' then
    local sent_at = tonumber(got[4] or now) or tonumber(now)
    redis.call('ZADD', k.deadlines, sent_at + tonumber(string.sub(deadline, 2)), device_id)
  elseif string.sub(deadline, 1, 1) == 'h' then
    local at = tonumber(now) + tonumber(string.sub(deadline, 2))
    if soak_until and soak_until < at then
      at = soak_until
    end
    redis.call('ZADD', k.deadlines, at, device_id)
  elseif deadline ~= '' then
    redis.call('ZADD', k.deadlines, deadline, device_id)
  end
  if spec.unpublished then
    redis.call('SADD', k.unpublished, device_id)
  end
  local key = got[3] or ''
  if key ~= '' and (spec.revoke or spent[new]) then
    redis.call('DEL', key_prefix .. key)
  end
  return {state, new, key}
end

local function events()
  local work = cjson.decode(ARGV[5])
  local specs = work.specs
  local keys = {}
  for rollout_id, text in pairs(given_rollouts()) do
    keys[rollout_id] = cjson.decode(text).keys
  end
  local outcomes = {}
  for n, e in ipairs(work.events) do
    outcomes[n] = apply(keys[e[1]], e[2], specs[e[3] + 1], e[4], e[5])
  end
  write_counts()
  return outcomes
end

local function due()
  local work = cjson.decode(ARGV[5])
  local k = cjson.decode(ARGV[7]).keys
  local late = redis.call(
    'ZRANGEBYSCORE', k.deadlines, '-inf', work.at, 'WITHSCORES', 'LIMIT', 0, work.limit
  )
  local soak = work.soak
  local outcomes = {}
  for n = 1, #late / 2 do
    local device_id, deadline = late[2 * n - 1], tonumber(late[2 * n])
    local spec = work.spec
    if soak then
      local got = redis.call('HMGET', k.device .. device_id, 'state', soak.field)
      if got[1] and soak.states[got[1]] then
        local ends = tonumber(got[2] or '')
        spec = (ends and deadline >= ends) and soak.over or soak.silent
        if soak.hold then
          spec = nil
        end
      end
    end
    if spec then
      local done = apply(k, device_id, spec, '', nil)
      -- Applied or not, the deadline has been dealt with (a device that moved on has no use
      -- for it): the next call finds the next devices.
      redis.call('ZREM', k.deadlines, device_id)
      table.insert(outcomes, {device_id, done[1], done[2], done[3]})
    end
  end
  write_counts()
  return outcomes
end

local refusals = {missing = true, rollout_state = true, command_mismatch = true,
  no_transition = true}

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

-- The firmware version a device reported, in its registry record (never made when missing).
local function record_version(key, work, version, now_s)
  local at = redis.call('HGET', key, work.version_at_field)
  if at then
    if (tonumber(at) or 0) > now_s then
      return
    end
  elseif redis.call('EXISTS', key) == 0 then
    return
  end
  redis.call('HSET', key, work.version_field, version, work.version_at_field, now_s)
end

local function results()
  local work = cjson.decode(ARGV[5])
  local command_prefix, reported = work.commands, work.results
  local registry, seen_field, seen_every_s = work.registry, work.seen_field, work.seen_every_s
  local version_statuses = work.version_statuses or {}
  local now_s = math.floor(tonumber(now) / 1000)
  local given = given_rollouts()
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
  local decoded = {}  -- rollout id -> decoded rules, or false
  local heard = {}
  local outcomes = {}
  for n, result in ipairs(reported) do
    local record = found[n]
    local command_id, device_id, status, version = result[1], result[2], result[3], result[4]
    local sent_to, command, rollout_id = record[1], record[2] or '', record[3] or ''
    local sent_at = record[5] or ''
    if sent_to == device_id then
      seen(registry .. device_id, seen_field, now_s, seen_every_s)
      if version ~= '' and version_statuses[status] then
        record_version(registry .. device_id, work, version, now_s)
      end
    end
    local reply
    if not (record[1] or record[2] or record[3] or record[4] or record[5]) then
      reply = {'unknown_command', '', '', '', '', ''}
    elseif sent_to ~= device_id then
      reply = {'wrong_device', '', '', '', '', sent_to or ''}
    elseif rollout_id == '' then
      reply = {'no_rollout', command, sent_at, '', '', ''}
    else
      local spec = decoded[rollout_id]
      if spec == nil then
        spec = given[rollout_id] ~= '' and cjson.decode(given[rollout_id])
        decoded[rollout_id] = spec
      end
      if not spec then
        reply = {'unknown_rollout', command, sent_at, rollout_id, '', ''}
      else
        heard[rollout_id] = spec.keys.rollout
        local by_status = spec.kinds[record[4] or ''] or spec.default
        local event_names = by_status.mismatched
        if by_status.version == '' or version == by_status.version then
          event_names = by_status.matched
        elseif version == '' and by_status.unversioned then
          event_names = by_status.unversioned
        end
        local name = event_names[status]
        if not name then
          reply = {'no_event', command, sent_at, rollout_id, '', ''}
        else
          local error = result[5]
          local extra = nil
          if error and error ~= '' then
            extra = {error = error}
          end
          local done = apply(spec.keys, device_id, spec.events[name], command_id, extra)
          if refusals[done[2]] then
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
elseif mode == 'due' then
  return due()
end
return events()
