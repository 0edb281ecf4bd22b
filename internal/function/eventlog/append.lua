-- Appends one CloudEvent to the global stream, its subject's stream and its type's stream,
-- unless (source, id) was appended before. Each stream is capped by MAXLEN ~ and trimmed by
-- MINID ~ (now - retention); the secondary streams also expire when idle for a retention.
-- KEYS[1] dedup key   KEYS[2] global stream   KEYS[3] subject stream   KEYS[4] type stream
-- ARGV[1] dedup TTL ms   ARGV[2] retention ms   ARGV[3] global MAXLEN   ARGV[4] per-subject and
-- per-type MAXLEN   ARGV[5] '1' when the event has a subject   ARGV[6] the event (JSON)
-- Returns {0, global entry id} when appended, {1, id of the first append} for a duplicate.
local prior = redis.call('GET', KEYS[1])
if prior then
  return {1, prior}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = now - tonumber(ARGV[2])
if oldest < 0 then
  oldest = 0
end
local minid = string.format('%d-0', oldest)

local function append(key, maxlen, expire)
  local id = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'ce', ARGV[6])
  redis.call('XTRIM', key, 'MINID', '~', minid)
  if expire then
    redis.call('PEXPIRE', key, ARGV[2])
  end
  return id
end

local id = append(KEYS[2], ARGV[3], false)
if ARGV[5] == '1' then
  append(KEYS[3], ARGV[4], true)
end
append(KEYS[4], ARGV[4], true)

redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return {0, id}
