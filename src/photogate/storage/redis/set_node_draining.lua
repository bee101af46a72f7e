-- ARGV: prefix, server_id, '1'/'0'.
local raw = redis.call('HGET', ARGV[1] .. 'nodes', ARGV[2])
if not raw then return 0 end
local rec = cjson.decode(raw)
rec.draining = ARGV[3] == '1'
redis.call('HSET', ARGV[1] .. 'nodes', ARGV[2], cjson.encode(rec))
return 1
