-- ARGV: prefix, server_id. Returns 1 if the node was there.
local p, sid = ARGV[1], ARGV[2]
local raw = redis.call('HGET', p .. 'nodes', sid)
if not raw then return 0 end
local rec = cjson.decode(raw)
local addr = rec.ip .. ':' .. rec.port
if redis.call('HGET', p .. 'node_addr', addr) == sid then redis.call('HDEL', p .. 'node_addr', addr) end
if rec.node_key ~= cjson.null and redis.call('HGET', p .. 'node_key', rec.node_key) == sid then
  redis.call('HDEL', p .. 'node_key', rec.node_key)
end
redis.call('HDEL', p .. 'nodes', sid)
redis.call('HDEL', p .. 'health', sid)
return 1
