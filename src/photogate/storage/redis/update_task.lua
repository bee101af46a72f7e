-- Change a task's fields; move it between status indexes; drop the claim once finished.
-- KEYS: task hash, this gateway's claimed hash. ARGV: prefix, id, JSON {field: string|null}, now.
local key = KEYS[1]
local old, created = unpack(redis.call('HMGET', key, 'status', 'created_at'))
if not old then return 0 end  -- no such task (every task has a status)
local p, id, now = ARGV[1], ARGV[2], ARGV[4]
local changes = cjson.decode(ARGV[3])
local set, drop = {'updated_at', now}, {}
for k, v in pairs(changes) do
  if v == cjson.null then drop[#drop + 1] = k else set[#set + 1] = k; set[#set + 1] = v end
end
redis.call('HSET', key, unpack(set))
if #drop > 0 then redis.call('HDEL', key, unpack(drop)) end
local new = changes['status']
if new and new ~= cjson.null and new ~= old then
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
