-- ARGV: prefix, no, now. Returns 1 if the order was ``created`` and is now ``closed``.
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('HGET', key, 'state') ~= 'created' then return 0 end
redis.call('HSET', key, 'state', 'closed', 'updated_at', ARGV[3])
redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2])
return 1
