-- drctl's Redis fingerprint, run atomically in the server (EVAL_RO; nothing is written).
-- ARGV[1]: sample target per database; ARGV[2]: number of databases (CONFIG GET databases).
--
-- Per non-empty database: DBSIZE, the number of keys with a TTL (INFO keyspace), and a
-- deterministic sample: the keys whose SHA-1 (of the name) has its top `bits` bits zero,
-- `bits` the smallest that brings the expected sample under 2 x target. Each sampled key is
-- hashed with its type, TTL presence (not value) and a canonical form of its value:
--   string  the value
--   hash    field/value pairs, sorted
--   list    the elements in order
--   set     the members, sorted
--   zset    members with scores, in score order
--   stream  entries (ids, fields), last-generated-id, groups (name, last-delivered-id, pending)
--   other   DUMP (module types)
-- Every piece is length-prefixed. Per type, the key hashes in key order are hashed again;
-- the database checksum covers the per-type checksums. Returns JSON.
local target = tonumber(ARGV[1])
local ndb = tonumber(ARGV[2])

local function lp(s)
  s = tostring(s)
  return #s .. ':' .. s
end

local function field(flat, name)
  for i = 1, #flat - 1, 2 do
    if flat[i] == name then
      return flat[i + 1]
    end
  end
  return nil
end

local function canon(key, t)
  local parts = { lp(t) }
  if redis.call('PTTL', key) >= 0 then
    parts[#parts + 1] = 'T'
  else
    parts[#parts + 1] = 'P'
  end
  if t == 'string' then
    parts[#parts + 1] = lp(redis.call('GET', key))
  elseif t == 'hash' then
    local flat = redis.call('HGETALL', key)
    local items = {}
    for i = 1, #flat, 2 do
      items[#items + 1] = lp(flat[i]) .. lp(flat[i + 1])
    end
    table.sort(items)
    parts[#parts + 1] = table.concat(items)
  elseif t == 'list' then
    local items = redis.call('LRANGE', key, 0, -1)
    for i = 1, #items do
      parts[#parts + 1] = lp(items[i])
    end
  elseif t == 'set' then
    local items = redis.call('SMEMBERS', key)
    for i = 1, #items do
      items[i] = lp(items[i])
    end
    table.sort(items)
    parts[#parts + 1] = table.concat(items)
  elseif t == 'zset' then
    local items = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for i = 1, #items do
      parts[#parts + 1] = lp(items[i])
    end
  elseif t == 'stream' then
    local entries = redis.call('XRANGE', key, '-', '+')
    for i = 1, #entries do
      parts[#parts + 1] = lp(entries[i][1])
      local f = entries[i][2]
      for j = 1, #f do
        parts[#parts + 1] = lp(f[j])
      end
    end
    local info = redis.call('XINFO', 'STREAM', key)
    parts[#parts + 1] = lp(field(info, 'last-generated-id') or '')
    local groups = redis.call('XINFO', 'GROUPS', key)
    local gs = {}
    for i = 1, #groups do
      local g = groups[i]
      gs[#gs + 1] = lp(field(g, 'name') or '') .. lp(field(g, 'last-delivered-id') or '')
        .. lp(field(g, 'pending') or 0)
    end
    table.sort(gs)
    parts[#parts + 1] = table.concat(gs)
  else
    parts[#parts + 1] = lp(redis.call('DUMP', key))
  end
  return redis.sha1hex(table.concat(parts, '|'))
end

local keyspace = redis.call('INFO', 'keyspace')
local result = {}
for db = 0, ndb - 1 do
  redis.call('SELECT', db)
  local n = redis.call('DBSIZE')
  if n > 0 then
    local bits = 0
    while n > target * 2 * (2 ^ bits) do
      bits = bits + 1
    end
    local limit = 2 ^ (32 - bits)
    local picked, seen = {}, {}
    local cursor = '0'
    repeat
      local r = redis.call('SCAN', cursor, 'COUNT', 1000)
      cursor = r[1]
      local keys = r[2]
      for i = 1, #keys do
        local k = keys[i]
        if not seen[k] and tonumber(string.sub(redis.sha1hex(k), 1, 8), 16) < limit then
          seen[k] = true
          picked[#picked + 1] = k
        end
      end
    until cursor == '0'
    table.sort(picked)
    local by_type, names = {}, {}
    for i = 1, #picked do
      local k = picked[i]
      local t = redis.call('TYPE', k)['ok']
      if not by_type[t] then
        by_type[t] = {}
        names[#names + 1] = t
      end
      local list = by_type[t]
      list[#list + 1] = redis.sha1hex(lp(k) .. canon(k, t))
    end
    table.sort(names)
    local types, all = {}, {}
    for _, t in ipairs(names) do
      local c = redis.sha1hex(table.concat(by_type[t]))
      types[t] = { keys = #by_type[t], checksum = c }
      all[#all + 1] = t .. '=' .. c
    end
    local expires = tonumber(string.match('\n' .. keyspace, '\ndb' .. db .. ':keys=%d+,expires=(%d+)') or '0')
    result[tostring(db)] = {
      keys = n,
      expires = expires,
      bits = bits,
      sampled = #picked,
      checksum = redis.sha1hex(table.concat(all, ',')),
      types = types,
    }
  end
end
return cjson.encode(result)
