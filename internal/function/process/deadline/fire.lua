-- Moves up to ARGV[2] deadlines due at or before ARGV[1] (ms) from the pending set into the
-- outbox, atomically, and returns them as {id, payload, id, payload, ...}.
-- KEYS[1] deadlines zset  KEYS[2] payloads hash  KEYS[3] outbox hash
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return {} end
local payloads = redis.call('HMGET', KEYS[2], unpack(due))
local out = {}
local hset = {}
for i, id in ipairs(due) do
  local p = payloads[i]
  if not p then p = '{}' end
  out[#out + 1] = id
  out[#out + 1] = p
  hset[#hset + 1] = id
  hset[#hset + 1] = p
end
redis.call('HSET', KEYS[3], unpack(hset))
redis.call('ZREM', KEYS[1], unpack(due))
redis.call('HDEL', KEYS[2], unpack(due))
return out
