-- ARGV: prefix, task_id, now. Returns the credits given back (0: none or done already).
local charge = ARGV[1] .. 'wx:charge:' .. ARGV[2]
if redis.call('HGET', charge, 'state') ~= 'charged' then return 0 end
local openid, credits = unpack(redis.call('HMGET', charge, 'openid', 'credits'))
redis.call('HSET', charge, 'state', 'refunded', 'updated_at', ARGV[3])
redis.call('SREM', ARGV[1] .. 'wx:charged', ARGV[2])
local user = ARGV[1] .. 'wx:user:' .. openid
if redis.call('EXISTS', user) == 1 then redis.call('HINCRBY', user, 'credits', tonumber(credits)) end
return tonumber(credits)
