package deadletter

import "github.com/redis/go-redis/v9"

// luaDrop is shared by every script that removes letters: it deletes one stream entry together
// with everything that points at it, so indexes never name letters that are gone. It builds index
// key names from the entry's own fields, which is why the store runs on one Redis (not Cluster).
const luaDrop = `
local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end

local function drop(prefix, stream, entry)
  local id = entry[1]
  redis.call('ZREM', prefix .. 'index:all', id)
  for _, attr in ipairs({'type', 'source', 'dest', 'code', 'reason'}) do
    local v = field(entry, attr)
    if v and v ~= '' then redis.call('ZREM', prefix .. 'index:' .. attr .. ':' .. v, id) end
  end
  local seen = field(entry, 'key')
  if seen then
    local seenKey = prefix .. 'seen:' .. seen
    if redis.call('GET', seenKey) == id then redis.call('DEL', seenKey) end
  end
  redis.call('DEL', prefix .. 'redrive:' .. id)
  -- Letters stored before the byte bound carry no size and were never counted.
  local size = tonumber(field(entry, 'size') or '0')
  if size > 0 then redis.call('DECRBY', prefix .. 'bytes', size) end
  redis.call('XDEL', stream, id)
end

local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// addScript stores one letter: idempotency check, age retention, the count and byte bounds,
// XADD, index updates and TTLs in one atomic round trip. A full store refuses the letter; it
// never evicts a letter to make room.
//
// KEYS[1] stream, KEYS[2] seen key, KEYS[3] byte counter, KEYS[4..] index keys of this letter
// (index:all first). Index scores are arrival ms * 1000 + the entry's sequence number (capped
// at 999).
// ARGV[1] prefix, ARGV[2] max letters, ARGV[3] max age ms, ARGV[4] trim batch, ARGV[5] max
// bytes, ARGV[6..] fields.
// Returns {1, id} when stored, {0, id-of-the-earlier-letter} for a duplicate, and
// {-1, letters, bytes, size} when the letter does not fit.
var addScript = redis.NewScript(luaDrop + `
local prefix, stream, seenKey, bytesKey = ARGV[1], KEYS[1], KEYS[2], KEYS[3]
local maxLen, maxAge, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local maxBytes = tonumber(ARGV[5])
local earlier = redis.call('GET', seenKey)
if earlier then return {0, earlier} end
-- Age retention first (explicit, configured expiry), at most batch removals per call to keep the
-- script's run time bounded; every add trims, so a backlog drains over the next adds.
local cutoff = nowMs() - maxAge - 1
if cutoff >= 0 then
  for _, e in ipairs(redis.call('XRANGE', stream, '-', tostring(cutoff), 'COUNT', batch)) do
    drop(prefix, stream, e)
  end
end
-- A letter's size is the bytes of its field names and values as stored.
local fields, size = {}, 0
for i = 6, #ARGV do
  fields[#fields + 1] = ARGV[i]
  size = size + #ARGV[i]
end
local letters = redis.call('XLEN', stream)
local used = tonumber(redis.call('GET', bytesKey) or '0')
if letters + 1 > maxLen or used + size > maxBytes then
  return {-1, letters, used, size}
end
fields[#fields + 1] = 'size'
fields[#fields + 1] = tostring(size)
local id = redis.call('XADD', stream, '*', unpack(fields))
redis.call('INCRBY', bytesKey, size)
local msStr, seqStr = string.match(id, '^(%d+)-(%d+)$')
-- Index score: ms * 1000 + seq, built as a string (Lua would print a 16-digit number in
-- exponent form), so every letter has its own score and listing can page by score.
local score = msStr .. string.format('%03d', math.min(tonumber(seqStr), 999))
redis.call('SET', seenKey, id, 'PX', maxAge)
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], score, id)
  redis.call('PEXPIRE', KEYS[i], maxAge)
end
-- The counter lives exactly as long as the stream it counts.
redis.call('PEXPIRE', stream, maxAge)
redis.call('PEXPIRE', bytesKey, maxAge)
return {1, id}
`)

// fetchScript reads letters by id with their redrive state, skipping ids that are gone. It stops
// after the letter that brings the reply past the byte budget, so a reply holds at most the
// budget plus one letter; the caller asks again for the ids it did not consume.
//
// KEYS[1] stream. ARGV[1] prefix, ARGV[2] byte budget, ARGV[3] "1" to leave out the event field,
// ARGV[4..] ids.
// Returns {ids consumed, entry, redrive-hash-fields, entry, redrive-hash-fields, …}.
var fetchScript = redis.NewScript(`
local budget, omit = tonumber(ARGV[2]), ARGV[3] == '1'
local out, used, consumed = {0}, 0, 0
for i = 4, #ARGV do
  consumed = consumed + 1
  local r = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #r == 1 then
    local entry = r[1]
    local f = entry[2]
    if omit then
      local kept = {}
      for j = 1, #f, 2 do
        if f[j] ~= 'event' then
          kept[#kept + 1] = f[j]
          kept[#kept + 1] = f[j + 1]
        end
      end
      f = kept
      entry = {entry[1], kept}
    end
    for j = 1, #f do used = used + #f[j] end
    out[#out + 1] = entry
    out[#out + 1] = redis.call('HGETALL', ARGV[1] .. 'redrive:' .. ARGV[i])
    if used >= budget then break end
  end
end
out[1] = consumed
return out
`)

// dropScript removes letters by id (purge, and a redrive that was accepted).
//
// KEYS[1] stream. ARGV[1] prefix, ARGV[2..] ids. Returns how many letters were removed.
var dropScript = redis.NewScript(luaDrop + `
local n = 0
for i = 2, #ARGV do
  local r = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #r == 1 then
    drop(ARGV[1], KEYS[1], r[1])
    n = n + 1
  end
end
return n
`)

// claimScript marks a letter before it is sent: the attempt count goes up and a lease keeps
// other redrive runs off it. The letter's idempotency key is released so that, if the redriven
// event fails again, its new dead letter is stored rather than taken for a duplicate.
//
// KEYS[1] stream, KEYS[2] redrive hash. ARGV[1] prefix, ARGV[2] id, ARGV[3] lease ms,
// ARGV[4] max age ms.
// Returns {"claimed", attempts, leaseUntilMs}, {"gone"} or {"busy", leaseUntilMs}.
var claimScript = redis.NewScript(luaDrop + `
local prefix, id = ARGV[1], ARGV[2]
local r = redis.call('XRANGE', KEYS[1], id, id)
if #r == 0 then return {'gone'} end
local now = nowMs()
local lease = tonumber(redis.call('HGET', KEYS[2], 'lease_until') or '0')
if lease > now then return {'busy', tostring(lease)} end
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
local until_ = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[2], 'lease_until', tostring(until_))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
local seen = field(r[1], 'key')
if seen then
  local seenKey = prefix .. 'seen:' .. seen
  if redis.call('GET', seenKey) == id then redis.call('DEL', seenKey) end
end
return {'claimed', attempts, tostring(until_)}
`)

// releaseScript ends a claim whose send was not accepted: the letter stays, with the reason, and
// its idempotency key is restored unless a newer letter for the same event took it meanwhile.
//
// KEYS[1] stream, KEYS[2] redrive hash. ARGV[1] prefix, ARGV[2] id, ARGV[3] error,
// ARGV[4] max age ms. Returns 1 when the letter is still stored.
var releaseScript = redis.NewScript(luaDrop + `
local prefix, id = ARGV[1], ARGV[2]
local r = redis.call('XRANGE', KEYS[1], id, id)
if #r == 0 then return 0 end
redis.call('HSET', KEYS[2], 'lease_until', '0', 'last_error', ARGV[3])
local seen = field(r[1], 'key')
if seen then
  redis.call('SET', prefix .. 'seen:' .. seen, id, 'NX', 'PX', tonumber(ARGV[4]))
end
return 1
`)
