-- One transition of one process instance, applied atomically (see engine.go).
--
-- KEYS[1] instance hash      KEYS[2] timeline list     KEYS[3] outbox list
-- KEYS[4] seen-events set    KEYS[5] timer deadlines zset  KEYS[6] timer payloads hash
-- KEYS[7] open tasks zset    KEYS[8] instances index zset  KEYS[9] unknown-events list
-- ARGV[1] now (ms)  ARGV[2] event JSON  ARGV[3] compiled definition JSON ('' unless a start event)
-- ARGV[4] retention (ms)  ARGV[5] timeline max entries  ARGV[6] timer owner
-- ARGV[7] task key prefix  ARGV[8] timer fired type  ARGV[9] task created type
-- ARGV[10] task completed type  ARGV[11] task rejected type
-- ARGV[12] traceparent of the step's span ('' for none), kept with the deadlines it schedules
--
-- The event JSON carries decision and decided only for a task decision whose signature the
-- engine has verified (see signature.go).
--
-- Returns {status, message, outbox entry...}: every command not yet acknowledged as published,
-- including those left by an earlier delivery that crashed before publishing; or
-- {'refused', why} for an event that claims an authority it cannot prove, with nothing written.
local now = tonumber(ARGV[1])
local ev = cjson.decode(ARGV[2])
local retention = tonumber(ARGV[4])
local owner, taskprefix, T_FIRED, T_TASK = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local T_DONE, T_REJ = ARGV[10], ARGV[11]
local traceparent = ARGV[12] or ''

local isdecision = ev.type == T_DONE or ev.type == T_REJ
local inst = ev.subject
local H = KEYS[1]

local function outbox_reply(status, msg)
  local r = {status, msg}
  for _, v in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do r[#r + 1] = v end
  return r
end

local exists = redis.call('EXISTS', H) == 1
local starting = ARGV[3] ~= ''
if not exists and not starting then
  redis.call('LPUSH', KEYS[9], cjson.encode({at = now, id = ev.id, source = ev.source, type = ev.type, subject = inst}))
  redis.call('LTRIM', KEYS[9], 0, 999)
  return {'unknown', 'no process instance ' .. inst}
end
local seenkey = ev.source .. ' ' .. ev.id
if exists and redis.call('SISMEMBER', KEYS[4], seenkey) == 1 then
  return outbox_reply('duplicate', 'event ' .. ev.id .. ' was already applied')
end

local f = redis.call('HMGET', H, 'def', 'status', 'idx', 'attempt', 'done', 'cidx', 'seq', 'data', 'deadline', 'gaveup')
local def, status, idx, attempt, done, cidx, seq, data, deadline, gaveup
if exists then
  def = cjson.decode(f[1])
  status, idx, attempt = f[2], tonumber(f[3]), tonumber(f[4])
  done, cidx, seq, data, deadline = cjson.decode(f[5]), tonumber(f[6]), tonumber(f[7]), f[8], f[9] or ''
  gaveup = cjson.decode(f[10])
else
  def = cjson.decode(ARGV[3])
  status, idx, attempt, done, cidx, seq, data, deadline, gaveup = 'running', 0, 0, {}, 0, 0, ev.data, '', {}
end
if starting and exists then
  return {'conflict', 'instance ' .. inst .. ' already exists (process ' .. cjson.decode(f[1]).name .. ')'}
end

-- Authority, checked against what this engine issued before anything is written: a refused
-- event changes nothing and is not remembered as seen.
--
-- A fired deadline counts only once functions/timer has taken it from the schedule, which it does
-- when the deadline is due: a forged fire of a pending deadline is refused, and one after the
-- take does only what the timer's own event is about to do.
if ev.type == T_FIRED and exists and ev.id == deadline and redis.call('ZSCORE', KEYS[5], ev.id) then
  return {'refused', 'deadline ' .. ev.id .. ' is not due: functions/timer has not fired it'}
end

-- A task decision (signature verified: ev.decision is set) must be the one the tasks function
-- recorded in the task hash (instance, decision, actor, time), else it is refused. It applies
-- only to the task this instance issued for the step it waits on (the task id is the command
-- id), and only while no decision on that task has been applied; otherwise it is ignored (a late
-- or repeated decision). dtask names the task when it applies; dwhy says why it is ignored.
local dtask, dwhy, dresult
if isdecision and not starting then
  if (ev.decision or '') == '' then
    return {'refused', ev.type .. ' is not a verified task decision'}
  end
  local c = ev.command or ''
  local t = redis.call('HMGET', taskprefix .. c, 'instance', 'step', 'state', 'actor', 'decided', 'applied', 'result')
  if not t[1] then
    dwhy = 'no task ' .. c
  elseif t[1] ~= inst then
    return {'refused', 'task ' .. c .. ' belongs to instance ' .. t[1] .. ', not ' .. inst}
  elseif t[3] ~= ev.decision or t[4] ~= ev.actor or t[5] ~= ev.decided then
    return {'refused', 'task ' .. c .. ' records ' .. (t[3] or '?') .. ' by ' .. (t[4] or '?') .. ' at ' .. (t[5] or '?') ..
      ', not ' .. ev.decision .. ' by ' .. ev.actor .. ' at ' .. ev.decided}
  elseif t[6] then
    dwhy = 'task ' .. c .. ' was already ' .. t[6]
  elseif status == 'running' then
    local s = def.steps[idx]
    if not s.task or c ~= inst .. ':' .. s.name .. ':' .. attempt then
      dwhy = 'task ' .. c .. ' is not the task this instance waits on (step ' .. s.name .. ')'
    else
      dtask, dresult = c, t[7] or ''
    end
  end
end

seq = seq + 1
redis.call('SADD', KEYS[4], seenkey)

local function timeline(e)
  e.at = now
  e.seq = seq
  redis.call('RPUSH', KEYS[2], cjson.encode(e))
end

local source = '/knfaas/process/' .. def.name
local function emit(id, typ, payload, stepname)
  local ext = {knfaasprocess = def.name}
  if stepname then
    ext.knfaasstep = stepname
    ext.knfaascommand = id
  end
  redis.call('RPUSH', KEYS[3], cjson.encode({id = id, type = typ, source = source, subject = inst, data = payload, ext = ext}))
  timeline({kind = 'out', id = id, type = typ, step = stepname})
end

local function cancel_deadline()
  if deadline ~= '' then
    redis.call('ZREM', KEYS[5], deadline)
    redis.call('HDEL', KEYS[6], deadline)
    deadline = ''
  end
end

local function schedule(cmd, ms)
  cancel_deadline()
  deadline = cmd .. ':deadline'
  local due = now + ms
  redis.call('ZADD', KEYS[5], due, deadline)
  local payload = {subject = inst, command = cmd, owner = owner, due = due}
  if traceparent ~= '' then payload.traceparent = traceparent end
  redis.call('HSET', KEYS[6], deadline, cjson.encode(payload))
  timeline({kind = 'timer', note = 'scheduled', id = deadline, due = due})
end

local function cmdid(s, a) return inst .. ':' .. s.name .. ':' .. a end
local function undoid(s, a) return inst .. ':' .. s.name .. ':undo:' .. a end

local function issue(i, a)
  local s = def.steps[i]
  local id = cmdid(s, a)
  if s.task then
    local tk = taskprefix .. id
    redis.call('HSET', tk, 'id', id, 'process', def.name, 'owner', owner, 'instance', inst, 'step', s.name,
      'title', s.task.title, 'assignee', s.task.assignee or '', 'group', s.task.group or '',
      'state', 'open', 'created', now, 'expires', now + s.timeout, 'data', data)
    redis.call('PEXPIRE', tk, s.timeout + retention)
    redis.call('ZADD', KEYS[7], now, id)
    emit(id, T_TASK, data, s.name)
  else
    emit(id, s.type, data, s.name)
  end
  schedule(id, s.timeout)
end

local function enter(i)
  while def.steps[i] and def.steps[i].skip do
    timeline({kind = 'state', note = 'skipped', step = def.steps[i].name})
    i = i + 1
  end
  idx, attempt = i, 1
  if i > #def.steps then
    status = 'completed'
    emit(inst .. ':completed', def.completed, data, nil)
    return
  end
  issue(i, 1)
end

local function undo(pos)
  while pos >= 1 do
    local s = def.steps[done[pos]]
    local id = undoid(s, 1)
    emit(id, s.comp.type, data, s.name)
    if s.comp.reply then
      cidx, attempt = pos, 1
      schedule(id, s.comp.timeout)
      return
    end
    pos = pos - 1
  end
  cidx = 0
  if #gaveup > 0 then
    status = 'compensation_incomplete'
    emit(inst .. ':compensated', def.compensated, cjson.encode({incomplete = gaveup}), nil)
  else
    status = 'compensated'
    emit(inst .. ':compensated', def.compensated, data, nil)
  end
end

local function fail(reason, s)
  cancel_deadline()
  status = 'compensating'
  timeline({kind = 'state', note = 'failed: ' .. reason, step = s.name})
  emit(inst .. ':failed', def.failed, cjson.encode({reason = reason, step = s.name}), nil)
  undo(#done)
end

local function expire_task(s)
  local tk = taskprefix .. cmdid(s, attempt)
  if redis.call('HGET', tk, 'state') == 'open' then
    redis.call('HSET', tk, 'state', 'expired')
  end
  redis.call('ZREM', KEYS[7], cmdid(s, attempt))
end

-- close_task records that the decision on task id was applied, so it never applies again.
local function close_task(id)
  redis.call('HSET', taskprefix .. id, 'applied', ev.decision, 'appliedat', now)
  redis.call('ZREM', KEYS[7], id)
end

-- matches is true when the reply names a command of the awaited step (any attempt) or names none.
local function matches(prefix)
  local c = ev.command or ''
  if c == '' then return true end
  return string.sub(c, 1, #prefix) == prefix and tonumber(string.sub(c, #prefix + 1)) ~= nil
end

local result, msg = 'applied', ''
local inentry = {kind = 'in', id = ev.id, type = ev.type, source = ev.source}
if ev.actor and ev.actor ~= '' then inentry.actor = ev.actor end

local function ignore(why)
  result, msg = 'stale', why
  inentry.note = 'ignored: ' .. why
end

if starting then
  redis.call('HSET', H, 'process', def.name, 'def', ARGV[3], 'data', data, 'created', now)
  inentry.note = 'started'
  timeline(inentry)
  enter(1)
elseif status ~= 'running' and status ~= 'compensating' then
  ignore('instance is ' .. status)
  if ev.type == T_FIRED then result = 'timer' end
  timeline(inentry)
elseif ev.type == T_FIRED then
  if ev.id ~= deadline then
    ignore('deadline ' .. ev.id .. ' is no longer pending')
    result = 'timer'
    timeline(inentry)
  else
    deadline = ''
    if status == 'running' then
      local s = def.steps[idx]
      inentry.step = s.name
      timeline(inentry)
      if attempt <= (s.retries or 0) then
        attempt = attempt + 1
        issue(idx, attempt)
      else
        if s.task then expire_task(s) end
        fail('timeout', s)
      end
    else
      local s = def.steps[done[cidx]]
      inentry.step = s.name
      timeline(inentry)
      if attempt <= s.comp.retries then
        attempt = attempt + 1
        local id = undoid(s, attempt)
        emit(id, s.comp.type, data, s.name)
        schedule(id, s.comp.timeout)
      else
        gaveup[#gaveup + 1] = s.name
        timeline({kind = 'state', note = 'gave up compensating', step = s.name})
        undo(cidx - 1)
      end
    end
  end
elseif status == 'running' then
  local s = def.steps[idx]
  inentry.step = s.name
  if isdecision and not dtask then
    ignore(dwhy)
    timeline(inentry)
  elseif isdecision then
    -- the payload as the tasks function recorded it, not as the event carries it
    inentry.data = dresult
    timeline(inentry)
    close_task(dtask)
    if s.ok[ev.type] then
      cancel_deadline()
      if s.comp then done[#done + 1] = idx end
      enter(idx + 1)
    else
      fail(ev.type, s)
    end
  elseif not matches(inst .. ':' .. s.name .. ':') then
    ignore('reply names command ' .. ev.command .. ', not step ' .. s.name)
    timeline(inentry)
  elseif s.ok[ev.type] then
    timeline(inentry)
    cancel_deadline()
    if s.comp then done[#done + 1] = idx end
    enter(idx + 1)
  elseif s.fail and s.fail[ev.type] then
    timeline(inentry)
    fail(ev.type, s)
  else
    ignore('step ' .. s.name .. ' does not wait for ' .. ev.type)
    timeline(inentry)
  end
else
  local s = def.steps[done[cidx]]
  inentry.step = s.name
  if ev.type == s.comp.reply and matches(inst .. ':' .. s.name .. ':undo:') then
    timeline(inentry)
    cancel_deadline()
    undo(cidx - 1)
  else
    ignore('compensation of ' .. s.name .. ' does not wait for ' .. ev.type)
    timeline(inentry)
  end
end

local terminal = status ~= 'running' and status ~= 'compensating'
if terminal then cancel_deadline() end
local doneenc = '[]'
if #done > 0 then doneenc = cjson.encode(done) end
local gaveenc = '[]'
if #gaveup > 0 then gaveenc = cjson.encode(gaveup) end
redis.call('HSET', H, 'status', status, 'idx', idx, 'attempt', attempt, 'done', doneenc, 'cidx', cidx,
  'seq', seq, 'deadline', deadline, 'gaveup', gaveenc, 'updated', now)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('ZADD', KEYS[8], now, inst)
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - retention)
if terminal then
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], retention) end
end
if result == 'applied' and starting then result = 'started' end
return outbox_reply(result, msg)
