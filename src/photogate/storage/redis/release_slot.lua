-- Give a slot back, only if this gateway still holds one there (a reaper may have taken
-- it back already). KEYS: inflight, reservations. ARGV: server_id. Returns the new count.
local mine = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if mine <= 0 then return tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') end
if mine == 1 then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HINCRBY', KEYS[2], ARGV[1], -1) end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]); return 0 end
return n
