-- Completes or rejects one human task, once.
-- KEYS[1] task hash  KEYS[2] open tasks zset
-- ARGV[1] now (ms)  ARGV[2] decision (completed|rejected)  ARGV[3] actor  ARGV[4] reply event JSON
-- ARGV[5] the decision's payload (JSON), kept as the task's result: the process records it, not
-- what the reply event carries
-- Returns {'ok', reply} | {'notfound'} | {'expired'} | {'decided', state, actor}
local f = redis.call('HMGET', KEYS[1], 'id', 'state', 'expires', 'actor', 'reply')
if not f[1] then return {'notfound'} end
local state = f[2]
if state == 'open' then
  if tonumber(ARGV[1]) > tonumber(f[3]) then
    redis.call('HSET', KEYS[1], 'state', 'expired')
    redis.call('ZREM', KEYS[2], f[1])
    return {'expired'}
  end
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'actor', ARGV[3], 'decided', ARGV[1], 'reply', ARGV[4], 'result', ARGV[5])
  redis.call('ZREM', KEYS[2], f[1])
  return {'ok', ARGV[4]}
end
if state == 'expired' then return {'expired'} end
-- The same decision by the same identity while its reply is still unpublished (a crash or a
-- failed send) publishes that reply again instead of refusing.
if state == ARGV[2] and f[4] == ARGV[3] and f[5] then return {'ok', f[5]} end
return {'decided', state, f[4] or ''}
