-- Paid, once: the order's credits granted. ARGV: prefix, no, transaction_id, now. Returns 1 if it did.
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
local state = redis.call('HGET', key, 'state')
if state ~= 'created' and state ~= 'closed' and state ~= 'failed' then return 0 end
redis.call('HSET', key, 'state', 'paid', 'transaction_id', ARGV[3], 'paid_at', ARGV[4], 'updated_at', ARGV[4])
redis.call('HDEL', key, 'error')
redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2])
local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
local user = ARGV[1] .. 'wx:user:' .. openid
if redis.call('EXISTS', user) == 1 then redis.call('HINCRBY', user, 'credits', tonumber(credits)) end
return 1
