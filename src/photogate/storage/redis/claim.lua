-- Claim up to n queued tasks for this gateway, and read them in the same round trip.
-- KEYS: queue, claimed hash. ARGV: prefix, n. Returns {id, {field, value, ...}, ...}.
local got = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[2]))
local out = {}
for i = 1, #got, 2 do
  local fields = redis.call('HGETALL', ARGV[1] .. 'task:' .. got[i])
  if #fields > 0 then
    redis.call('HSET', KEYS[2], got[i], got[i + 1])
    out[#out + 1] = got[i]
    out[#out + 1] = fields
  end
end
return out
