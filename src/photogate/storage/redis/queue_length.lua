-- Tasks no gateway has claimed: in the queue, and in the owners' queues of the fair share
-- (claim.lua). KEYS: queue. ARGV: prefix. Returns the count.
local p = ARGV[1]
local count = redis.call('ZCARD', KEYS[1])
for _, owner in ipairs(redis.call('LRANGE', p .. 'fq:ring', 0, -1)) do
  count = count + redis.call('ZCARD', p .. 'fq:q:' .. owner)
end
return count
