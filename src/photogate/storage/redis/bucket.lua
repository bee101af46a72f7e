-- Token buckets, drawn from in turn: the first that has no token stops the draw (the ones
-- before it keep what they gave). KEYS: the buckets. ARGV: per bucket rate per s, burst,
-- take '1' (take a token) / '0' (only look). Returns {index (1-based) of the bucket that
-- had no token, or 0, the seconds to wait there as a string ('0' when every one had one)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i = 1, #KEYS do
  local rate, burst, take = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), ARGV[3 * i] == '1'
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'stamp')
  local tokens, stamp = tonumber(v[1]), tonumber(v[2])
  if not tokens and not take then
    tokens = nil  -- a bucket never drawn from is full: nothing to look at, nothing to write
  else
    if not tokens then tokens, stamp = burst, now end
    tokens = math.min(burst, tokens + (now - stamp) * rate)
    local wait = 0
    if tokens >= 1 then
      if take then tokens = tokens - 1 end
    else
      wait = (1 - tokens) / rate
    end
    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'stamp', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
    if wait > 0 then return {i, tostring(wait)} end
  end
end
return {0, '0'}
