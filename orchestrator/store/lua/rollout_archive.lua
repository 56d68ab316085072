-- The device records of finished rollouts, packed, and the reads that see a rollout's devices
-- whether their records are still hashes or packed already (store/rollout_archive.py).
-- KEYS[1] only routes the call to the node of the prefix's slot (Redis Cluster).
-- ARGV[1] is the entry point:
--
-- 'compact': pack the next chunk of a finished rollout, in cohort order, and delete the hashes
--   it packed, in this one call: kill the caller at any point and each device is either a
--   hash or packed, never both, never neither. ARGV[2] rollout id, ARGV[3] terminal states
--   (JSON list), ARGV[4] records per chunk, ARGV[5] devices per lookup bucket, ARGV[6] fields
--   left out (JSON list), ARGV[7] active rollouts set, ARGV[8] lease key, ARGV[9] rollout hash,
--   ARGV[10] order list, ARGV[11] device hash prefix, ARGV[12] device lock prefix,
--   ARGV[13] archive hash, ARGV[14] archived rollouts zset, ARGV[15] finished rollouts zset,
--   ARGV[16] now ms. Returns {outcome, devices packed}: 'active' or 'leased' (an engine may
--   still write to it: nothing done), 'gone', 'not_finished', 'more' or 'done' (every device
--   packed, the order list deleted, the rollout in the archived zset).
-- 'slice': ARGV[2] archive hash, ARGV[3] order list, ARGV[4] device hash prefix, ARGV[5] first
--   position, ARGV[6] position after the last, ARGV[7] a device state ('' for any). Returns
--   {positions, device ids, records} of the devices at those cohort positions (only those in
--   that state, when one is given), each record a flat {field, value, ...} list ({} for a
--   device without one).
-- 'find': ARGV[2] archive hash, ARGV[3] device hash prefix, ARGV[4..] device ids. Returns each
--   device's record ({} when it has none).
-- 'due': ARGV[2] finished rollouts zset, ARGV[3] archived rollouts zset, ARGV[4] and ARGV[5]
--   the score range (as ZRANGEBYSCORE reads it), ARGV[6] how many at most. Returns the
--   finished rollouts in that score range that are not archived yet, oldest first.
--
-- The archive hash of a rollout holds:
--   'meta'  JSON {"chunk": records per chunk, "buckets": lookup buckets, "total": cohort size,
--           "packed": positions packed so far, "names": [field name, ...],
--           "values": [short value, ...]}
--   'c:N'   the records of cohort positions [N * chunk, (N + 1) * chunk), one after the other
--   'b:N'   8 bytes per device whose id's sha1 (first 8 hex digits as a number) modulo buckets
--           is N: the next 4 bytes of the sha1, then its position (unsigned, big-endian)
-- A record is its length (varint) then its device id (a value without a name), then for each
-- field a head byte (index in names * 8 + kind; index 31 means a varint index follows) and the
-- value, by kind: 0 an index in values (varint), 1 a whole number (varint; decimal digits with
-- no leading zero), 2 32 lowercase hex digits (16 bytes), 3 a lowercase UUID (16 bytes),
-- 4 anything else (varint length, bytes). Varints are little-endian base 128.
local mode = ARGV[1]
local DICT, INT, HEX, UUID, TEXT = 0, 1, 2, 3, 4
local MAX_SHORT = 32  -- longest value that may go to the values list
local MAX_VALUES = 256  -- values listed at most; others are written out
local WIDE = 31  -- a name index this large or larger follows its head byte
local UUID_SHAPE = '^' .. string.rep('%x', 8) .. '%-' .. string.rep('%x', 4) .. '%-'
  .. string.rep('%x', 4) .. '%-' .. string.rep('%x', 4) .. '%-' .. string.rep('%x', 12) .. '$'

-- --- the encoding ----------------------------------------------------------------------------

local function put_varint(parts, n)
  while n >= 128 do
    parts[#parts + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  parts[#parts + 1] = string.char(n)
end

local function get_varint(s, at)
  local n, scale = 0, 1
  while true do
    local byte = string.byte(s, at)
    at = at + 1
    if byte < 128 then
      return n + byte * scale, at
    end
    n = n + (byte - 128) * scale
    scale = scale * 128
  end
end

-- 32 hex digits as 16 bytes, and back (lowercase): four 32-bit words, big-endian.
local function hex_bytes(hex)
  return struct.pack('>I4I4I4I4', tonumber(string.sub(hex, 1, 8), 16),
    tonumber(string.sub(hex, 9, 16), 16), tonumber(string.sub(hex, 17, 24), 16),
    tonumber(string.sub(hex, 25, 32), 16))
end

local function hex16(s, at)
  return string.format('%08x%08x%08x%08x', struct.unpack('>I4I4I4I4', s, at))
end

-- A list of strings ({list, index}) that records refer to by position; it only grows.
local function listing(list)
  local index = {}
  for i, value in ipairs(list) do
    index[value] = i - 1
  end
  return {list = list, index = index}
end

local function intern(listed, value)
  local at = listed.index[value]
  if not at then
    at = #listed.list
    listed.list[at + 1] = value
    listed.index[value] = at
  end
  return at
end

-- How `value` is written; `values` is nil where the values list may not be used (device ids).
local function kind_of(value, values)
  if value == '0' or (#value <= 15 and string.find(value, '^[1-9]%d*$')) then
    return INT
  end
  if #value == 32 and not string.find(value, '[^0-9a-f]') then
    return HEX
  end
  if #value == 36 and string.byte(value, 9) == 45 and string.find(value, UUID_SHAPE)
      and not string.find(value, '[A-F]') then
    return UUID
  end
  if values and #value <= MAX_SHORT and (values.index[value] or #values.list < MAX_VALUES) then
    return DICT
  end
  return TEXT
end

local function put_value(parts, kind, value, values)
  if kind == INT then
    put_varint(parts, tonumber(value))
  elseif kind == HEX then
    parts[#parts + 1] = hex_bytes(value)
  elseif kind == UUID then
    parts[#parts + 1] = hex_bytes((string.gsub(value, '%-', '')))
  elseif kind == DICT then
    put_varint(parts, intern(values, value))
  else
    put_varint(parts, #value)
    parts[#parts + 1] = value
  end
end

local function get_value(s, at, kind, values)
  local n
  if kind == INT then
    n, at = get_varint(s, at)
    return string.format('%.0f', n), at
  elseif kind == HEX then
    return hex16(s, at), at + 16
  elseif kind == UUID then
    local h = hex16(s, at)
    return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-' .. string.sub(h, 13, 16)
      .. '-' .. string.sub(h, 17, 20) .. '-' .. string.sub(h, 21), at + 16
  elseif kind == DICT then
    n, at = get_varint(s, at)
    return values[n + 1], at
  end
  n, at = get_varint(s, at)
  return string.sub(s, at, at + n - 1), at + n
end

-- One device's record from its hash (a flat HGETALL reply) without the fields left out.
local function pack_record(device_id, row, names, values, left_out)
  local body = {}
  local kind = kind_of(device_id, nil)
  body[1] = string.char(kind)
  put_value(body, kind, device_id, nil)
  for i = 1, #row, 2 do
    local name, value = row[i], row[i + 1]
    if not left_out[name] then
      local n = intern(names, name)
      kind = kind_of(value, values)
      if n < WIDE then
        body[#body + 1] = string.char(n * 8 + kind)
      else
        body[#body + 1] = string.char(WIDE * 8 + kind)
        put_varint(body, n)
      end
      put_value(body, kind, value, values)
    end
  end
  local text = table.concat(body)
  local record = {}
  put_varint(record, #text)
  record[#record + 1] = text
  return table.concat(record)
end

-- Where the value of `kind` starting at `at` of `s` ends.
local function skip_value(s, at, kind)
  if kind == HEX or kind == UUID then
    return at + 16
  end
  local n
  n, at = get_varint(s, at)
  if kind == TEXT then
    return at + n
  end
  return at
end

-- The record starting at `at` of `s`: device id, flat {field, value, ...}, the next record's
-- start. With `wanted`, a record whose state is another (or that has none) is not decoded: its
-- id and fields are nil.
local function get_record(s, at, names, values, wanted)
  local length
  length, at = get_varint(s, at)
  local stop = at + length
  local id_kind, id_at = string.byte(s, at), at + 1
  at = skip_value(s, id_at, id_kind)
  local row, matched = {}, not wanted
  while at < stop do
    local head = string.byte(s, at)
    at = at + 1
    local n, kind = math.floor(head / 8), head % 8
    if n == WIDE then
      n, at = get_varint(s, at)
    end
    local name, value = names[n + 1]
    value, at = get_value(s, at, kind, values)
    if wanted and name == 'state' then
      if value ~= wanted then
        return nil, nil, stop
      end
      matched = true
    end
    row[#row + 1] = name
    row[#row + 1] = value
  end
  if not matched then
    return nil, nil, stop
  end
  return (get_value(s, id_at, id_kind, values)), row, stop
end

-- --- reading an archive ----------------------------------------------------------------------

local function open_archive(archive)
  local raw = redis.call('HGET', archive, 'meta')
  if not raw then
    return nil
  end
  local meta = cjson.decode(raw)
  meta.key = archive
  meta.chunks = {}
  return meta
end

-- The chunk holding `position` and where its record starts in it.
local function locate(meta, position)
  local n = math.floor(position / meta.chunk)
  local chunk = meta.chunks[n]
  if not chunk then
    chunk = redis.call('HGET', meta.key, 'c:' .. n) or ''
    meta.chunks[n] = chunk
  end
  local at = 1
  for _ = 1, position - n * meta.chunk do
    local length
    length, at = get_varint(chunk, at)
    at = at + length
  end
  return chunk, at
end

-- The lookup bucket of a device id, and the 4 bytes that mark its entries there.
local function bucket_of(device_id, buckets)
  local sha = redis.sha1hex(device_id)
  return 'b:' .. (tonumber(string.sub(sha, 1, 8), 16) % buckets),
    struct.pack('>I4', tonumber(string.sub(sha, 9, 16), 16))
end

local function lookup(meta, device_id)
  local field, mark = bucket_of(device_id, meta.buckets)
  local bucket = redis.call('HGET', meta.key, field)
  if not bucket then
    return {}
  end
  for at = 1, #bucket, 8 do
    if string.sub(bucket, at, at + 3) == mark then
      local chunk, from = locate(meta, (struct.unpack('>I4', bucket, at + 4)))
      local found, row = get_record(chunk, from, meta.names, meta.values)
      if found == device_id then
        return row
      end
    end
  end
  return {}
end

local function slice()
  local meta = open_archive(ARGV[2])
  local order, prefix = ARGV[3], ARGV[4]
  local position, stop = tonumber(ARGV[5]), tonumber(ARGV[6])
  local wanted = ARGV[7] ~= '' and ARGV[7] or nil
  local positions, ids, rows = {}, {}, {}
  local function add(device_id, row)
    if device_id and (#row > 0 or not wanted) then
      positions[#positions + 1] = position
      ids[#ids + 1] = device_id
      rows[#rows + 1] = row
    end
  end
  if meta then
    local packed = math.min(stop, meta.packed)
    while position < packed do
      local chunk, at = locate(meta, position)
      local chunk_end = math.min(packed, (math.floor(position / meta.chunk) + 1) * meta.chunk)
      while position < chunk_end do
        local device_id, row
        device_id, row, at = get_record(chunk, at, meta.names, meta.values, wanted)
        add(device_id, row)
        position = position + 1
      end
    end
  end
  if position < stop then
    for _, device_id in ipairs(redis.call('LRANGE', order, position, stop - 1)) do
      local hash = prefix .. device_id
      if not wanted or redis.call('HGET', hash, 'state') == wanted then
        add(device_id, redis.call('HGETALL', hash))
      end
      position = position + 1
    end
  end
  return {positions, ids, rows}
end

local function find()
  local meta = false  -- opened at the first device without a hash
  local prefix = ARGV[3]
  local rows = {}
  for i = 4, #ARGV do
    local row = redis.call('HGETALL', prefix .. ARGV[i])
    if #row == 0 then
      if meta == false then
        meta = open_archive(ARGV[2])
      end
      if meta then
        row = lookup(meta, ARGV[i])
      end
    end
    rows[#rows + 1] = row
  end
  return rows
end

-- --- packing ---------------------------------------------------------------------------------

local function compact()
  local rid = ARGV[2]
  local rollout, order, prefix, lock_prefix = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
  local archive, archived, finished = ARGV[13], ARGV[14], ARGV[15]
  if redis.call('SISMEMBER', ARGV[7], rid) == 1 then
    return {'active', 0}
  end
  if redis.call('EXISTS', ARGV[8]) == 1 then
    return {'leased', 0}
  end
  local state = redis.call('HGET', rollout, 'state')
  if not state then
    return {'gone', 0}
  end
  local terminal = false
  for _, name in ipairs(cjson.decode(ARGV[3])) do
    if name == state then
      terminal = true
    end
  end
  if not terminal then
    return {'not_finished', 0}
  end
  local raw = redis.call('HGET', archive, 'meta')
  local meta
  if raw then
    meta = cjson.decode(raw)
  else
    local total = redis.call('LLEN', order)
    meta = {
      chunk = tonumber(ARGV[4]), buckets = math.max(1, math.ceil(total / tonumber(ARGV[5]))),
      total = total, packed = 0, names = {}, values = {},
    }
  end
  local left_out = {}
  for _, name in ipairs(cjson.decode(ARGV[6])) do
    left_out[name] = true
  end
  local names, values = listing(meta.names), listing(meta.values)
  local ids = redis.call('LRANGE', order, meta.packed, meta.packed + meta.chunk - 1)
  if #ids > 0 then
    local records, hashes, entries = {}, {}, {}
    for i, device_id in ipairs(ids) do
      local hash = prefix .. device_id
      records[i] = pack_record(device_id, redis.call('HGETALL', hash), names, values, left_out)
      hashes[i] = hash
      local lock = lock_prefix .. device_id .. ':rollout'
      if redis.call('GET', lock) == rid then
        redis.call('DEL', lock)
      end
      local field, mark = bucket_of(device_id, meta.buckets)
      local adds = entries[field]
      if not adds then
        adds = {}
        entries[field] = adds
      end
      adds[#adds + 1] = mark .. struct.pack('>I4', meta.packed + i - 1)
    end
    redis.call('HSET', archive, 'c:' .. math.floor(meta.packed / meta.chunk), table.concat(records))
    for field, adds in pairs(entries) do
      local old = redis.call('HGET', archive, field) or ''
      redis.call('HSET', archive, field, old .. table.concat(adds))
    end
    redis.call('DEL', unpack(hashes))
  end
  meta.packed = meta.packed + #ids
  meta.names, meta.values = names.list, values.list
  redis.call('HSET', archive, 'meta', cjson.encode(meta))
  if meta.packed < redis.call('LLEN', order) then
    return {'more', #ids}
  end
  redis.call('DEL', order)
  redis.call('ZADD', archived, redis.call('ZSCORE', finished, rid) or ARGV[16], rid)
  return {'done', #ids}
end

local function due()
  local wanted = tonumber(ARGV[6])
  local found = {}
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', ARGV[2], ARGV[4], ARGV[5])) do
    if not redis.call('ZSCORE', ARGV[3], rid) then
      found[#found + 1] = rid
      if #found == wanted then
        break
      end
    end
  end
  return found
end

if mode == 'compact' then
  return compact()
elseif mode == 'slice' then
  return slice()
elseif mode == 'find' then
  return find()
end
return due()
