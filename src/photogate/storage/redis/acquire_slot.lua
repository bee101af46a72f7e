-- Take one slot on a node unless all are taken (a dead gateway's ghosts count as taken).
-- KEYS: inflight hash, this gateway's reservations, ghosts. ARGV: server_id, slots.
-- Returns the node's new count, or -1 (full).
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local ghost = redis.call('HGET', KEYS[3], ARGV[1])
if ghost then
  local count, untl = string.match(ghost, '([^:]+):([^:]+)')
  local t = redis.call('TIME')
  if tonumber(untl) > tonumber(t[1]) then n = n + tonumber(count) else redis.call('HDEL', KEYS[3], ARGV[1]) end
end
if n >= tonumber(ARGV[2]) then return -1 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
