-- Claim up to n queued tasks for this gateway, and read them in the same round trip.
-- KEYS: queue, claimed hash. ARGV: prefix, n, then for the fair order (absent: oldest first):
-- quantum (megapixels per unit of class weight), class weights (JSON), default class, the
-- least a photo is charged (megapixels).
-- Returns {id, {field, value, ...}, ...}.
--
-- The fair order is deficit round robin on megapixels (photogate/dispatch/fairshare.py runs
-- the same algorithm for one gateway): tasks move from the queue (where the API and the
-- hand-backs put them) to their owner's queue P fq:q:{owner}, by created_at; P fq:ring lists
-- the owners that have tasks waiting, P fq:credit holds each one's credit. The owner at the
-- head of the ring is served while its credit is positive, then gets a quantum times its
-- class weight and goes to the tail; an owner whose queue runs out leaves the ring.
local p, n = ARGV[1], tonumber(ARGV[2])
local ring, credit = p .. 'fq:ring', p .. 'fq:credit'
local out = {}

local function take(id, score)
  local fields = redis.call('HGETALL', p .. 'task:' .. id)
  if #fields == 0 then return nil end
  redis.call('HSET', KEYS[2], id, score)
  out[#out + 1] = id
  out[#out + 1] = fields
  return fields
end

-- The head task of the owner at the head of the ring; the owner leaves the ring once empty.
local function pop_head(owner)
  local got = redis.call('ZPOPMIN', p .. 'fq:q:' .. owner, 1)
  if redis.call('EXISTS', p .. 'fq:q:' .. owner) == 0 then
    redis.call('LPOP', ring)
    redis.call('HDEL', credit, owner)
  end
  return got[1], got[2]
end

if not ARGV[3] then
  local got = redis.call('ZPOPMIN', KEYS[1], n)
  for i = 1, #got, 2 do take(got[i], got[i + 1]) end
  -- Tasks a gateway with the fair share on left in owners' queues: after the queue, in ring order.
  while #out < 2 * n and redis.call('LLEN', ring) > 0 do
    local id, score = pop_head(redis.call('LINDEX', ring, 0))
    if id then take(id, score) end
  end
  return out
end

local quantum, weights, default, least = tonumber(ARGV[3]), cjson.decode(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local function quantum_of(class)
  return quantum * (weights[class or default] or weights[default] or 1)
end
local function head_quantum(owner)
  local head = redis.call('ZRANGE', p .. 'fq:q:' .. owner, 0, 0)[1]
  return quantum_of(head and redis.call('HGET', p .. 'task:' .. head, 'priority_class') or nil)
end
local function put(owner, value)
  redis.call('HSET', credit, owner, string.format('%.17g', value))
end

-- Intake: every unclaimed task goes to its owner's queue; a new owner joins the ring's tail.
local queued = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #queued, 2 do
  local id = queued[i]
  local owner, class = unpack(redis.call('HMGET', p .. 'task:' .. id, 'owner', 'priority_class'))
  owner = owner or ''
  if redis.call('HEXISTS', credit, owner) == 0 then
    redis.call('RPUSH', ring, owner)
    put(owner, quantum_of(class or nil))
  end
  redis.call('ZADD', p .. 'fq:q:' .. owner, queued[i + 1], id)
end
if #queued > 0 then redis.call('DEL', KEYS[1]) end

local topped = 0
while #out < 2 * n do
  local owner = redis.call('LINDEX', ring, 0)
  if not owner then break end
  local have = tonumber(redis.call('HGET', credit, owner))
  if have <= 0 then
    local len = redis.call('LLEN', ring)
    if topped >= len then
      -- A full round served nobody (photos much larger than a quantum): give every owner,
      -- at once, the rounds it takes the first of them to be back in credit.
      local owners, rounds = redis.call('LRANGE', ring, 0, -1), nil
      for _, o in ipairs(owners) do
        local r = math.max(math.floor(-tonumber(redis.call('HGET', credit, o)) / head_quantum(o)), 0)
        if rounds == nil or r < rounds then rounds = r end
      end
      for _, o in ipairs(owners) do
        put(o, tonumber(redis.call('HGET', credit, o)) + rounds * head_quantum(o))
      end
      have = tonumber(redis.call('HGET', credit, owner))
      topped = 0
    end
    put(owner, have + head_quantum(owner))
    redis.call('RPUSH', ring, redis.call('LPOP', ring))
    topped = topped + 1
  else
    local id, score = pop_head(owner)
    local fields = id and take(id, score)
    if fields then
      local w, h = 0, 0
      for i = 1, #fields, 2 do
        if fields[i] == 'width' then w = tonumber(fields[i + 1]) end
        if fields[i] == 'height' then h = tonumber(fields[i + 1]) end
      end
      if redis.call('HEXISTS', credit, owner) == 1 then
        put(owner, have - math.max(w * h / 1e6, least))
      end
      topped = 0
    end
  end
end
return out
