-- Take or keep a lease. KEYS: the lease. ARGV: holder, ttl ms. Returns 1 while held.
-- Uses take_lease() (lease_fn.lua).
return take_lease(KEYS[1], ARGV[1], ARGV[2])
