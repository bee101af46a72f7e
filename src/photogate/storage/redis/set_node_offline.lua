-- Unregistered: the record stays (id, key, address, token), marked offline and down.
-- ARGV: prefix, server_id. Returns 1 if the node was there.
local p, sid = ARGV[1], ARGV[2]
local raw = redis.call('HGET', p .. 'nodes', sid)
if not raw then return 0 end
local rec = cjson.decode(raw)
rec.offline = true
redis.call('HSET', p .. 'nodes', sid, cjson.encode(rec))
local hraw = redis.call('HGET', p .. 'health', sid)
local h = hraw and cjson.decode(hraw) or {failures = 0, completed = 0, failed = 0, health = {}}
h.healthy, h.last_error = false, 'offline: unregistered'
redis.call('HSET', p .. 'health', sid, cjson.encode(h))
return 1
