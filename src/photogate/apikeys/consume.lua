-- ARGV: prefix, key id, day, megapixels. Counts one photo against the key's quota of the day,
-- unless that would pass a limit. Returns {status, photos used, megapixels used (text)}.
local key = ARGV[1] .. 'apikey:' .. ARGV[2]
local day, mp = tonumber(ARGV[3]), tonumber(ARGV[4])
local f = redis.call('HMGET', key, 'id', 'revoked_at', 'day', 'used_photos', 'used_megapixels',
                     'photos_per_day', 'megapixels_per_day')
if not f[1] or f[2] then return {'unknown', 0, '0'} end
local photos, used = 0, 0
if tonumber(f[3]) == day then photos, used = tonumber(f[4]) or 0, tonumber(f[5]) or 0 end
if f[6] and photos + 1 > tonumber(f[6]) then return {'photos', photos, tostring(used)} end
if f[7] and used + mp > tonumber(f[7]) then return {'megapixels', photos, tostring(used)} end
redis.call('HSET', key, 'day', day, 'used_photos', photos + 1, 'used_megapixels', tostring(used + mp))
return {'ok', photos + 1, tostring(used + mp)}
