-- Take a deleted project out of every API key limited to it: a key limited to it alone is
-- deleted (an empty limit would mean every project), a key limited to others too keeps those.
-- KEYS[1] the index of key digests; ARGV[1] key hash prefix, ARGV[2] project id
-- Returns {keys deleted, keys narrowed}.
local revoked, narrowed = 0, 0
for _, digest in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. digest
  local limits = redis.call('HGET', key, 'projects')
  if limits and limits ~= '' then
    local kept, found = {}, false
    for project in string.gmatch(limits, '%S+') do
      if project == ARGV[2] then
        found = true
      else
        table.insert(kept, project)
      end
    end
    if found and #kept == 0 then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], digest)
      revoked = revoked + 1
    elseif found then
      redis.call('HSET', key, 'projects', table.concat(kept, ' '))
      narrowed = narrowed + 1
    end
  end
end
return {revoked, narrowed}
