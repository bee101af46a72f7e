-- Prelude of unclaim.lua and reap.lua (the loader puts it in front of them): put one claimed
-- task back in the shared queue, at `score`. A task that was processing is queued again (its
-- node dropped); a finished or deleted one stays where it is. Returns 1 if it went back, else 0.
local function requeue(p, id, score)
  local key = p .. 'task:' .. id
  local status = redis.call('HGET', key, 'status')
  if status ~= 'queued' and status ~= 'processing' then return 0 end
  if status == 'processing' then
    local created = redis.call('HGET', key, 'created_at')
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'server_id')
    redis.call('ZREM', p .. 'status:processing', id)
    redis.call('ZADD', p .. 'status:queued', created, id)
  end
  redis.call('ZADD', p .. 'queue', score, id)
  return 1
end

