-- Forget a task everywhere. KEYS: task hash. ARGV: prefix, id.
local p, id = ARGV[1], ARGV[2]
local status, owner = unpack(redis.call('HMGET', KEYS[1], 'status', 'owner'))
if status then redis.call('ZREM', p .. 'status:' .. status, id) end
if owner then redis.call('ZREM', p .. 'owner:' .. owner, id) end
redis.call('ZREM', p .. 'done', id)
redis.call('ZREM', p .. 'queue', id)
return redis.call('DEL', KEYS[1])
