-- Begin deleting a project, unless the engine still has work on one of its rollouts. The check
-- and the deletion record are one step, so no rollout can start in between: rollout_create.lua
-- refuses a project that has the record, and every other create in a project checks it too.
-- KEYS[1] project hash, KEYS[2] its deletion record, KEYS[3] active rollouts set
-- ARGV[1] project id, ARGV[2] rollout hash prefix, ARGV[3] now (ISO 8601), ARGV[4] who deletes
-- Returns {'missing'}, {'active', id, name, state, id, name, state, ...} or {'begun'}; a
-- deletion that began earlier is begun again as it is (its record keeps who started it).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local active = {'active'}
for _, rid in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local head = redis.call('HMGET', ARGV[2] .. rid, 'project_id', 'name', 'state')
  if head[1] == ARGV[1] then
    table.insert(active, rid)
    table.insert(active, head[2] or '')
    table.insert(active, head[3] or '')
  end
end
if #active > 1 then
  return active
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'started_at', ARGV[3], 'by', ARGV[4])
end
return {'begun'}
