-- Applies one event's change to one read-model entry, exactly once per (projector, source, id).
-- KEYS[1] inbox entry   KEYS[2] entry hash   KEYS[3] model index (zset)   KEYS[4] model version
-- ARGV[1] inbox TTL in ms   ARGV[2] entry key (index member)   ARGV[3] number of ops (n)
-- ARGV[4 .. 4+3n-1] ops as (kind, field, value) triples   then ARGV: number of watches (w),
-- then w pairs (field, threshold).
-- Returns {0, result-json} when applied, {1, result-json} when the event was seen before: the
-- result recorded the first time, so the caller can repeat the same replies.
local seen = redis.call('GET', KEYS[1])
if seen then
  return {1, seen}
end

local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local kind, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if kind == 'incr' then
    redis.call('HINCRBY', KEYS[2], field, value)
  elseif kind == 'set' then
    redis.call('HSET', KEYS[2], field, value)
  elseif kind == 'del' then
    redis.call('HDEL', KEYS[2], field)
  elseif kind == 'max' then
    local cur = tonumber(redis.call('HGET', KEYS[2], field))
    if cur == nil or tonumber(value) > cur then
      redis.call('HSET', KEYS[2], field, value)
    end
  else
    return redis.error_reply('unknown op ' .. tostring(kind))
  end
  i = i + 3
end

-- A watch fires once when its field drops below the threshold and re-arms when the field is
-- back at or above it: "once per dip". The armed state lives in the entry, next to the value.
local crossings = {}
local w = tonumber(ARGV[i])
i = i + 1
for _ = 1, w do
  local field, threshold = ARGV[i], tonumber(ARGV[i + 1])
  local value = tonumber(redis.call('HGET', KEYS[2], field)) or 0
  local flag = '_below:' .. field
  local below = redis.call('HEXISTS', KEYS[2], flag) == 1
  if value < threshold and not below then
    redis.call('HSET', KEYS[2], flag, '1')
    crossings[#crossings + 1] = {field = field, value = value, threshold = threshold, direction = 'below'}
  elseif value >= threshold and below then
    redis.call('HDEL', KEYS[2], flag)
    crossings[#crossings + 1] = {field = field, value = value, threshold = threshold, direction = 'recovered'}
  end
  i = i + 2
end

if #crossings == 0 then
  crossings = nil -- cjson would encode an empty table as {}, not []
end

local version = redis.call('HINCRBY', KEYS[2], '_version', 1)
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('INCR', KEYS[4])

local result = cjson.encode({version = version, crossings = crossings})
redis.call('SET', KEYS[1], result, 'PX', ARGV[1])
return {0, result}
