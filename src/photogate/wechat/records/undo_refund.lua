-- ARGV: prefix, no, error, now.
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('HGET', key, 'state') ~= 'refunding' then return 0 end
redis.call('HSET', key, 'state', 'paid', 'error', ARGV[3], 'updated_at', ARGV[4])
redis.call('HDEL', key, 'out_refund_no')
redis.call('ZREM', ARGV[1] .. 'wx:orders:refunding', ARGV[2])
local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
local user = ARGV[1] .. 'wx:user:' .. openid
if redis.call('EXISTS', user) == 1 then redis.call('HINCRBY', user, 'credits', tonumber(credits)) end
return 1
