-- ARGV: prefix, openid, amount, task_id, now. Returns 1 if charged.
local user = ARGV[1] .. 'wx:user:' .. ARGV[2]
local amount = tonumber(ARGV[3])
if tonumber(redis.call('HGET', user, 'credits') or '0') < amount then return 0 end
redis.call('HINCRBY', user, 'credits', -amount)
redis.call('HSET', ARGV[1] .. 'wx:charge:' .. ARGV[4], 'openid', ARGV[2], 'credits', amount, 'state', 'charged',
           'created_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('SADD', ARGV[1] .. 'wx:charged', ARGV[4])
return 1
