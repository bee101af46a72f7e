-- Change an order's fields. ARGV: prefix, no, JSON {field: string|null}, now. Returns 1 if found.
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
for k, v in pairs(cjson.decode(ARGV[3])) do
  if v == cjson.null then redis.call('HDEL', key, k) else redis.call('HSET', key, k, v) end
end
redis.call('HSET', key, 'updated_at', ARGV[4])
if redis.call('HGET', key, 'state') ~= 'created' then redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2]) end
return 1
