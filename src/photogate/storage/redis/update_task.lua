-- Change a task's fields; move it between status indexes; drop the claim once finished.
-- KEYS: task hash, this gateway's claimed hash. ARGV: prefix, id, JSON {field: string|null}, now.
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local p, id, now = ARGV[1], ARGV[2], ARGV[4]
local changes = cjson.decode(ARGV[3])
local old = redis.call('HGET', key, 'status')
for k, v in pairs(changes) do
  if v == cjson.null then redis.call('HDEL', key, k) else redis.call('HSET', key, k, v) end
end
redis.call('HSET', key, 'updated_at', now)
local new = changes['status']
if new and new ~= cjson.null and new ~= old then
  local created = redis.call('HGET', key, 'created_at')
  redis.call('ZREM', p .. 'status:' .. old, id)
  redis.call('ZADD', p .. 'status:' .. new, created, id)
  if new == 'completed' or new == 'failed' then
    redis.call('ZADD', p .. 'done', now, id)
    redis.call('HDEL', KEYS[2], id)
  else
    redis.call('ZREM', p .. 'done', id)
  end
end
return 1
