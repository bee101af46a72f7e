-- ARGV: prefix, key id, day, megapixels. Undoes one consume of that day (none once it has passed).
local key = ARGV[1] .. 'apikey:' .. ARGV[2]
local f = redis.call('HMGET', key, 'day', 'used_photos', 'used_megapixels')
if tonumber(f[1]) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', key, 'used_photos', math.max((tonumber(f[2]) or 0) - 1, 0),
           'used_megapixels', tostring(math.max((tonumber(f[3]) or 0) - tonumber(ARGV[4]), 0)))
return 1
