-- The device registry: device records, and the ordered sets of device ids that list them (a
-- project's devices; its devices with one tag).
--
-- An id set is cut into sorted sets (leaves) of at most MAX ids, so that every leaf stays in
-- Redis's compact listpack encoding (zset-max-listpack-entries, 128 by default): one sorted set
-- of thousands of ids costs about 134 B per id, leaves about 50. The leaf holding the smallest
-- ids is the set's base key itself (so a set written whole by earlier versions is read as one
-- big leaf, and split on its next addition); every other leaf is `base:<its first id>`, and the
-- set's bounds key (a lex sorted set) lists those first ids. A leaf holds the ids from its
-- first id up to the next leaf's first id.
--
-- KEYS[1] only routes the call to the node of the prefix's slot (Redis Cluster).
-- ARGV[1] is the entry point, ARGV[2] its arguments as one JSON object:
--
-- 'write' {"key", "id", "expect": {field: value}, "record": {field: value}, "remove": [[base,
--   bounds], ...], "add": [[base, bounds], ...], "delete": [key, ...], "download_keys"?: [set,
--   download key prefix]}: when the record at `key` is exactly `expect` ({} = no record), replace
--   it with `record` ({} = delete it), take `id` out of the `remove` sets and put it in the `add`
--   sets, delete the `delete` keys and the download keys listed in the set (and the set).
--   Returns 'ok', or 'changed' (nothing written: read the record again and retry), or, when
--   the key `unless` is given and exists (a new device's project is being deleted), 'refused'.
-- 'page' {"base", "bounds", "after", "want", "budget", "record" (prefix of record keys), "match":
--   {field: value}}: the ids after `after` ('' = from the start) in order, at most `budget` of
--   them looked at; those whose record holds every `match` field with that value, at most
--   `want`. Returns {1 when the set has no more ids, the last id looked at, {id, {field, value,
--   ...}, ...}}.
-- 'touch' {"key", "field", "now", "every"}: the record's `field` becomes `now` when it is at
--   least `every` older (or absent), and only when the record exists. Returns 1 when written.
-- 'versions' {"reports": [[key, version, at], ...], "field", "at_field"}: each record's
--   `field` becomes the version and `at_field` the time reported, when the record exists and
--   its `at_field` is not later. Returns how many were written.
local MAX = 128
local PIECE = 64 -- ids per leaf after a split

local function leaf(base, first)
  if first == '' then
    return base
  end
  return base .. ':' .. first
end

-- The first id of the leaf that holds (or would hold) `id`.
local function leaf_of(bounds, id)
  return redis.call('ZREVRANGEBYLEX', bounds, '[' .. id, '-', 'LIMIT', 0, 1)[1] or ''
end

-- Cut a full leaf into leaves of PIECE ids, the first keeping its key. Each is written anew:
-- Redis never turns a sorted set that outgrew listpack back into one.
local function split(base, bounds, key)
  local ids = redis.call('ZRANGE', key, 0, -1)
  redis.call('DEL', key)
  for at = 1, #ids, PIECE do
    local piece = {}
    for i = at, math.min(at + PIECE - 1, #ids) do
      table.insert(piece, 0)
      table.insert(piece, ids[i])
    end
    if at == 1 then
      redis.call('ZADD', key, unpack(piece))
    else
      redis.call('ZADD', leaf(base, ids[at]), unpack(piece))
      redis.call('ZADD', bounds, 0, ids[at])
    end
  end
end

local function add(base, bounds, id)
  local key = leaf(base, leaf_of(bounds, id))
  if redis.call('ZCARD', key) >= MAX then -- split first: the leaf never outgrows listpack
    split(base, bounds, key)
    key = leaf(base, leaf_of(bounds, id))
  end
  redis.call('ZADD', key, 0, id)
end

local function remove(base, bounds, id)
  local first = leaf_of(bounds, id)
  local key = leaf(base, first)
  redis.call('ZREM', key, id)
  if first ~= '' and redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', bounds, first) -- its range goes back to the leaf before it
  end
end

local function write(a)
  if a.unless and redis.call('EXISTS', a.unless) == 1 then
    return 'refused'
  end
  local current = redis.call('HGETALL', a.key)
  local left = 0
  for _ in pairs(a.expect) do
    left = left + 1
  end
  for i = 1, #current, 2 do
    if a.expect[current[i]] ~= current[i + 1] then
      return 'changed'
    end
    left = left - 1
  end
  if left ~= 0 then
    return 'changed'
  end
  for _, set in ipairs(a.remove) do
    remove(set[1], set[2], a.id)
  end
  redis.call('DEL', a.key)
  for _, key in ipairs(a.delete) do
    redis.call('DEL', key)
  end
  if a.download_keys then
    local set, prefix = a.download_keys[1], a.download_keys[2]
    for _, key in ipairs(redis.call('SMEMBERS', set)) do
      redis.call('DEL', prefix .. key)
    end
    redis.call('DEL', set)
  end
  local flat = {}
  for field, value in pairs(a.record) do
    table.insert(flat, field)
    table.insert(flat, value)
  end
  if #flat > 0 then
    redis.call('HSET', a.key, unpack(flat))
  end
  for _, set in ipairs(a.add) do
    add(set[1], set[2], a.id)
  end
  return 'ok'
end

local function page(a)
  local fields, wanted = {}, {}
  for field, value in pairs(a.match) do
    table.insert(fields, field)
    table.insert(wanted, value)
  end
  local rows, found, looked, last = {}, 0, 0, a.after
  local first = ''
  local from = '-'
  if a.after ~= '' then
    first = leaf_of(a.bounds, a.after)
    from = '(' .. a.after
  end
  while true do
    local ids = redis.call(
      'ZRANGEBYLEX', leaf(a.base, first), from, '+', 'LIMIT', 0, a.budget - looked
    )
    for _, id in ipairs(ids) do
      looked = looked + 1
      last = id
      local key = a.record .. id
      local matched = true
      if #fields > 0 then
        local got = redis.call('HMGET', key, unpack(fields))
        for i = 1, #fields do
          if got[i] ~= wanted[i] then
            matched = false
            break
          end
        end
      end
      if matched then
        local row = redis.call('HGETALL', key)
        if #row > 0 then
          table.insert(rows, id)
          table.insert(rows, row)
          found = found + 1
          if found >= a.want then
            return {0, last, rows}
          end
        end
      end
    end
    if looked >= a.budget then
      return {0, last, rows}
    end
    local next_first = redis.call('ZRANGEBYLEX', a.bounds, '(' .. first, '+', 'LIMIT', 0, 1)[1]
    if not next_first then
      return {1, last, rows}
    end
    first, from = next_first, '-'
  end
end

local function touch(a)
  local now = tonumber(a.now)
  local at = redis.call('HGET', a.key, a.field)
  if at then
    if now - (tonumber(at) or 0) < tonumber(a.every) then
      return 0
    end
  elseif redis.call('EXISTS', a.key) == 0 then
    return 0
  end
  redis.call('HSET', a.key, a.field, a.now)
  return 1
end

local function versions(a)
  local written = 0
  for _, report in ipairs(a.reports) do
    local key, version, at = report[1], report[2], tonumber(report[3])
    local stored = redis.call('HGET', key, a.at_field)
    if (stored and (tonumber(stored) or 0) <= at)
        or (not stored and redis.call('EXISTS', key) == 1) then
      redis.call('HSET', key, a.field, version, a.at_field, report[3])
      written = written + 1
    end
  end
  return written
end

local entry, args = ARGV[1], cjson.decode(ARGV[2])
if entry == 'write' then
  return write(args)
elseif entry == 'page' then
  return page(args)
elseif entry == 'touch' then
  return touch(args)
elseif entry == 'versions' then
  return versions(args)
end
return redis.error_reply('unknown entry point ' .. tostring(entry))
