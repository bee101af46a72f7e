-- Apply the claim photogate.identity.decide() made from a read of the records (the rule is
-- there, not here): update the node it names, or mint the next id (INCR). It first checks that
-- what the decision read is unchanged (compare and set) and answers {'retry'} when not.
-- A key is attached, never replaced.
-- ARGV: prefix, ip, port, node_key, slots, weight, info JSON, new token, now,
--       sid by key, its record, sid at the address, its record (each '' for none),
--       the claim: sid to update ('' for a new node), '1' to rotate the token, key to attach ('' for none).
-- Returns {record JSON, created 0/1, previous address or ''}.
local p, ip, port, nkey = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local slots, weight, info, token, now = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local key_sid, key_raw, addr_sid, addr_raw = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local sid, rotate, attach = ARGV[14], ARGV[15] == '1', ARGV[16]
local addr = ip .. ':' .. port
if nkey ~= '' and (redis.call('HGET', p .. 'node_key', nkey) or '') ~= key_sid then return {'retry'} end
if (redis.call('HGET', p .. 'node_addr', addr) or '') ~= addr_sid then return {'retry'} end
if key_sid ~= '' and (redis.call('HGET', p .. 'nodes', key_sid) or '') ~= key_raw then return {'retry'} end
if addr_sid ~= '' and (redis.call('HGET', p .. 'nodes', addr_sid) or '') ~= addr_raw then return {'retry'} end
local rec = false
if sid ~= '' then rec = cjson.decode(redis.call('HGET', p .. 'nodes', sid)) end
local created, previous = 0, ''
local health = false
if rec then
  local old_addr = rec.ip .. ':' .. rec.port
  if old_addr ~= addr then
    previous = old_addr
    if redis.call('HGET', p .. 'node_addr', old_addr) == sid then redis.call('HDEL', p .. 'node_addr', old_addr) end
  end
  if attach ~= '' and rec.node_key == cjson.null then rec.node_key = attach end
  if rotate then rec.node_token = token end
  rec.ip, rec.port, rec.offline = ip, port, false
  if slots ~= '' then rec.slots = tonumber(slots) end
  if weight ~= '' then rec.weight = tonumber(weight) end
  rec.updated_at, rec.info = now, cjson.decode(info)
  local raw = redis.call('HGET', p .. 'health', sid)
  if raw then health = cjson.decode(raw) end
else
  local ordinal = redis.call('INCR', p .. 'node_counter')
  sid = string.format('GPU-%03d', ordinal)
  rec = {server_id = sid, ordinal = ordinal, ip = ip, port = port, node_token = token,
         node_key = (nkey ~= '' and nkey) or cjson.null, slots = tonumber(slots ~= '' and slots or '1'),
         weight = tonumber(weight ~= '' and weight or '1'), draining = false, offline = false,
         registered_at = now, updated_at = now, info = cjson.decode(info)}
  created = 1
end
if not health then health = {healthy = true, failures = 0, completed = 0, failed = 0, health = {}} end
-- The node just reached a gateway: it is up until a check says otherwise.
health.healthy, health.failures, health.last_error = true, 0, cjson.null
if previous ~= '' then health.health = {} end
local encoded = cjson.encode(rec)
redis.call('HSET', p .. 'nodes', sid, encoded)
redis.call('HSET', p .. 'node_addr', addr, sid)
if nkey ~= '' and rec.node_key == nkey then redis.call('HSET', p .. 'node_key', nkey, sid) end
redis.call('HSET', p .. 'health', sid, cjson.encode(health))
return {encoded, created, previous}
