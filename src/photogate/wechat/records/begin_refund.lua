-- ARGV: prefix, no, out_refund_no, force '1'/'0', now. Returns 'ok', 'state' or 'spent'.
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('HGET', key, 'state') ~= 'paid' then return 'state' end
local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
credits = tonumber(credits)
local user = ARGV[1] .. 'wx:user:' .. openid
local have = tonumber(redis.call('HGET', user, 'credits') or '0')
if have >= credits then
  redis.call('HINCRBY', user, 'credits', -credits)
elseif ARGV[4] ~= '1' then
  return 'spent'
elseif redis.call('EXISTS', user) == 1 then
  redis.call('HSET', user, 'credits', 0)
end
redis.call('HSET', key, 'state', 'refunding', 'out_refund_no', ARGV[3], 'updated_at', ARGV[5])
redis.call('ZADD', ARGV[1] .. 'wx:orders:refunding', ARGV[5], ARGV[2])
return 'ok'
