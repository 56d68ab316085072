-- Delete one chunk of a finished rollout past its retention; the last chunk deletes the rest.
-- Each call is whole on its own, so two sweeps may run it at once and a sweep that died between
-- calls is finished by the next one: the rollout stays in the finished index until it is gone.
-- KEYS[1] only routes the call to the node of the prefix's slot (Redis Cluster).
-- ARGV[1] rollout id, ARGV[2] terminal states (JSON list), ARGV[3] chunk (devices per call),
-- ARGV[4] active rollouts set, ARGV[5] finished rollouts zset, ARGV[6] the project's rollout
-- index ('' when unknown), ARGV[7] name key ('' when unknown), ARGV[8] device hash prefix,
-- ARGV[9] device lock prefix, ARGV[10] order list, ARGV[11] archived rollouts zset,
-- ARGV[12..] the rollout's other keys (hash, counts, events, deadlines, retry, unpublished,
-- lease, archive), deleted with the last chunk.
-- A compacted rollout (store/rollout_archive.py) has no order list left, and a compaction cut
-- short has packed a head of it (those hashes are gone): either way the archive hash goes with
-- the last chunk.
-- Returns {outcome, devices deleted}: 'active' (the engine still finishes it: nothing done),
-- 'not_finished' (not terminal: only taken out of the finished index), 'more' or 'deleted'.
local rid = ARGV[1]
if redis.call('SISMEMBER', ARGV[4], rid) == 1 then
  return {'active', 0}
end
-- No hash means an earlier call deleted it; an active rollout always has one.
local state = redis.call('HGET', ARGV[12], 'state')
if state then
  local terminal = false
  for _, name in ipairs(cjson.decode(ARGV[2])) do
    if name == state then
      terminal = true
    end
  end
  if not terminal then
    redis.call('ZREM', ARGV[5], rid)
    return {'not_finished', 0}
  end
end
-- Out of listings from the first call on; GET answers 404 once the hash goes with the last.
if ARGV[6] ~= '' then
  redis.call('ZREM', ARGV[6], rid)
end
if ARGV[7] ~= '' and redis.call('GET', ARGV[7]) == rid then
  redis.call('DEL', ARGV[7])
end
-- Devices from the end of the order list, which shrinks by as many in the same call.
local order = ARGV[10]
local chunk = tonumber(ARGV[3])
local ids = redis.call('LRANGE', order, -chunk, -1)
if #ids > 0 then
  local hashes = {}
  for i, device_id in ipairs(ids) do
    hashes[i] = ARGV[8] .. device_id
    local lock = ARGV[9] .. device_id .. ':rollout'
    if redis.call('GET', lock) == rid then
      redis.call('DEL', lock)
    end
  end
  redis.call('UNLINK', unpack(hashes))
  redis.call('LTRIM', order, 0, -(#ids + 1))
end
if redis.call('LLEN', order) > 0 then
  return {'more', #ids}
end
redis.call('UNLINK', unpack(ARGV, 12))
redis.call('ZREM', ARGV[11], rid)
redis.call('ZREM', ARGV[5], rid)
return {'deleted', #ids}
