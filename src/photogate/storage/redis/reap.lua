-- A dead (or stopping) gateway's claims go back to the shared queue and its node slots
-- are freed. Refused while its heartbeat lives, unless ARGV[3] is '1' (its own shutdown).
-- A dead gateway's jobs may still run on their nodes (nobody told the node to stop): they
-- stay counted as ghosts for ARGV[4] s, or until the node reports itself idle.
-- ARGV: prefix, gid, force, ghost seconds (0: none). Returns the tasks put back, or -1.
-- Uses requeue() (requeue.lua).
local p, gid = ARGV[1], ARGV[2]
local g = p .. 'gw:' .. gid
if ARGV[3] ~= '1' and redis.call('EXISTS', g .. ':alive') == 1 then return -1 end
local res = redis.call('HGETALL', g .. ':res')
local now = tonumber(redis.call('TIME')[1])
local hold = tonumber(ARGV[4])
for i = 1, #res, 2 do
  local held = tonumber(res[i + 1])
  local n = redis.call('HINCRBY', p .. 'inflight', res[i], -held)
  if n <= 0 then redis.call('HDEL', p .. 'inflight', res[i]) end
  if hold > 0 and held > 0 then
    local count = held
    local ghost = redis.call('HGET', p .. 'ghosts', res[i])
    if ghost then
      local c, untl = string.match(ghost, '([^:]+):([^:]+)')
      if tonumber(untl) > now then count = count + tonumber(c) end
    end
    redis.call('HSET', p .. 'ghosts', res[i], count .. ':' .. (now + hold))
  end
end
local claimed = redis.call('HGETALL', g .. ':claimed')
local back = 0
for i = 1, #claimed, 2 do
  back = back + requeue(p, claimed[i], claimed[i + 1])
end
redis.call('DEL', g .. ':res', g .. ':claimed', g .. ':alive')
redis.call('SREM', p .. 'gateways', gid)
return back
