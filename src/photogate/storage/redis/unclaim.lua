-- Put claimed tasks this gateway does not hold (a reply lost with the connection) back
-- in the shared queue. KEYS: claimed hash. ARGV: prefix, ids... Returns how many.
-- Uses requeue() (requeue.lua).
local p, back = ARGV[1], 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local created = redis.call('HGET', KEYS[1], id)
  if created then
    redis.call('HDEL', KEYS[1], id)
    back = back + requeue(p, id, created)
  end
end
return back
