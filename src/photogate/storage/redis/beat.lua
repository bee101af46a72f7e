-- A gateway's heartbeat in one step: renew its key, take or keep the health prober's lease,
-- and name the gateways whose key expired (the caller reaps them: reap.lua).
-- ARGV: prefix, gid, ttl ms, now. Returns {1 while this gateway holds the lease else 0, {dead gid...}}.
-- Uses take_lease() (lease_fn.lua).
local p, gid, ttl = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', p .. 'gw:' .. gid .. ':alive', ARGV[4], 'PX', ttl)
redis.call('SADD', p .. 'gateways', gid)
local held = take_lease(p .. 'lease:health', gid, ttl)
local dead = {}
for _, other in ipairs(redis.call('SMEMBERS', p .. 'gateways')) do
  if other ~= gid and redis.call('EXISTS', p .. 'gw:' .. other .. ':alive') == 0 then dead[#dead + 1] = other end
end
return {held, dead}
