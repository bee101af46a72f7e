-- Prelude of lease.lua and beat.lua: take or keep a lease for `ttl` ms. Returns 1 while
-- `holder` holds it, else 0.
local function take_lease(key, holder, ttl)
  local now = redis.call('GET', key)
  if now == holder then redis.call('PEXPIRE', key, ttl); return 1 end
  if not now then redis.call('SET', key, holder, 'PX', ttl); return 1 end
  return 0
end

