-- WeChat reports the order refunded. ARGV: prefix, no, refund_id, now.
-- Returns {taken, shortfall}, or {-1, 0} when it was refunded already or is unknown.
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
local state = redis.call('HGET', key, 'state')
if not state or state == 'refunded' then return {-1, 0} end
local taken, shortfall = 0, 0
if state == 'paid' then
  local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
  credits = tonumber(credits)
  local user = ARGV[1] .. 'wx:user:' .. openid
  taken = math.min(tonumber(redis.call('HGET', user, 'credits') or '0'), credits)
  shortfall = credits - taken
  if taken > 0 then redis.call('HINCRBY', user, 'credits', -taken) end
  redis.call('HSET', ARGV[1] .. 'wx:clawback:' .. ARGV[2], 'openid', openid, 'refund_id', ARGV[3],
             'granted', credits, 'taken', taken, 'shortfall', shortfall, 'created_at', ARGV[4])
end
redis.call('HSET', key, 'state', 'refunded', 'updated_at', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', key, 'refund_id', ARGV[3]) end
redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2])
redis.call('ZREM', ARGV[1] .. 'wx:orders:refunding', ARGV[2])
return {taken, shortfall}
