-- A health outcome, shared by every gateway. ARGV: prefix, server_id, ok '1'/'0', report JSON
-- or '', error, threshold, now, counter ('completed', 'failed' or ''), is a check '1'/'0',
-- how many outcomes to count, '1' to move only the counter (successes counted late, at a
-- refresh: whatever happened since, they change nothing else).
-- Returns 1 when the node went up, -1 when it went down, 0 otherwise.
local p, sid = ARGV[1], ARGV[2]
local node = redis.call('HGET', p .. 'nodes', sid)
-- Gone, or offline (a probe or a job that was under way when it unregistered): no change.
if not node or cjson.decode(node).offline == true then return 0 end
local raw = redis.call('HGET', p .. 'health', sid)
local h = raw and cjson.decode(raw) or {healthy = false, failures = 0, completed = 0, failed = 0, health = {}}
local was = h.healthy
if ARGV[9] == '1' then h.last_check = tonumber(ARGV[7]) end
if ARGV[8] ~= '' then h[ARGV[8]] = (h[ARGV[8]] or 0) + (tonumber(ARGV[10]) or 1) end
if ARGV[11] == '1' then
  redis.call('HSET', p .. 'health', sid, cjson.encode(h))
  return 0
end
if ARGV[3] == '1' then
  if ARGV[4] ~= '' then
    h.health = cjson.decode(ARGV[4])
    -- The node says it runs nothing: no dead gateway's job is left there.
    if tonumber(h.health.busy) == 0 and (tonumber(h.health.queued) or 0) == 0 then
      redis.call('HDEL', p .. 'ghosts', sid)
    end
  end
  h.failures, h.last_error, h.healthy = 0, cjson.null, true
else
  h.failures = (h.failures or 0) + 1
  h.last_error = ARGV[5]
  if h.healthy and h.failures >= tonumber(ARGV[6]) then h.healthy = false end
end
redis.call('HSET', p .. 'health', sid, cjson.encode(h))
if h.healthy and not was then return 1 end
if was and not h.healthy then return -1 end
return 0
