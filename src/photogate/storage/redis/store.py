"""The distributed store: tasks, the node registry, the shared queue and node slots in Redis.

Several gateways share one Redis (issue 8). Every multi-key change is one Lua script or
one MULTI/EXEC, so two gateways never see half of a change: the node id counter is an
``INCR`` inside the registration script (two gateways never hand out the same
``GPU-00N``), and a node slot is taken by a script that checks ``inflight < slots``
before it increments. Keys (``P`` is ``storage.redis_prefix``)::

    P task:{id}            hash   one task's fields (absent field: None)
    P status:{status}      zset   task ids by created_at, one per status (listing, counts)
    P done                 zset   finished task ids by finish time (expiry)
    P queue                zset   queued task ids no gateway has claimed, by created_at
    P gw:{gid}:claimed     hash   task id -> created_at: the tasks gateway gid holds
    P gw:{gid}:res         hash   server_id -> slots gateway gid holds on that node
    P gw:{gid}:alive       string gateway gid's heartbeat (expires: the gateway is dead)
    P gateways             set    gateway ids that may hold claims
    P inflight             hash   server_id -> jobs running on it, all gateways together
    P ghosts               hash   server_id -> "n:until": jobs a dead gateway may have left
                                  running there (counted as taken until the node says it
                                  is idle, or until ``until``)
    P nodes                hash   server_id -> node record (JSON; an unregistered node stays, offline)
    P node_addr            hash   "ip:port" -> server_id
    P node_key             hash   node key -> server_id
    P node_counter         string the last ordinal handed out (INCR)
    P health               hash   server_id -> shared health state (JSON)
    P lease:health         string the gateway that probes the fleet now (SET NX PX)
    P owner:{openid}       zset   a WeChat user's task ids by created_at
    P settings             hash   runtime setting -> JSON {value, changed_at, who}
    P settings_version     string bumped (INCR) by every change of ``settings``
    P wx:...               the WeChat records (``photogate.wechat.db``)

Keys are built inside the scripts from the prefix, so this runs on one Redis (a primary,
with a replica and Sentinel if wanted), not on Redis Cluster.

Every Redis error surfaces as :class:`~photogate.errors.StoreUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import wraps
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ... import identity
from ...config import redacted_url
from ...errors import StoreUnavailable
from ...models import NodeRecord, TaskRecord, TaskStatus

log = structlog.get_logger("photogate.storage.redis")
T = TypeVar("T")

_FLOATS = ("created_at", "updated_at", "started_at", "finished_at")
_INTS = ("input_bytes", "width", "height", "attempts", "result_bytes")
FINISHED = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)

# -- Lua -------------------------------------------------------------------------------------

#: Change a task's fields; move it between status indexes; drop the claim once finished.
#: KEYS: task hash, this gateway's claimed hash. ARGV: prefix, id, JSON {field: string|null}, now.
UPDATE_TASK = """
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
"""

#: Forget a task everywhere. KEYS: task hash. ARGV: prefix, id.
DELETE_TASK = """
local p, id = ARGV[1], ARGV[2]
local status, owner = unpack(redis.call('HMGET', KEYS[1], 'status', 'owner'))
if status then redis.call('ZREM', p .. 'status:' .. status, id) end
if owner then redis.call('ZREM', p .. 'owner:' .. owner, id) end
redis.call('ZREM', p .. 'done', id)
redis.call('ZREM', p .. 'queue', id)
return redis.call('DEL', KEYS[1])
"""

#: Claim up to n queued tasks for this gateway, and read them in the same round trip.
#: KEYS: queue, claimed hash. ARGV: prefix, n. Returns {id, {field, value, ...}, ...}.
CLAIM = """
local got = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[2]))
local out = {}
for i = 1, #got, 2 do
  local fields = redis.call('HGETALL', ARGV[1] .. 'task:' .. got[i])
  if #fields > 0 then
    redis.call('HSET', KEYS[2], got[i], got[i + 1])
    out[#out + 1] = got[i]
    out[#out + 1] = fields
  end
end
return out
"""

#: Put claimed tasks this gateway does not hold (a reply lost with the connection) back
#: in the shared queue. KEYS: claimed hash. ARGV: prefix, ids... Returns how many.
UNCLAIM = """
local p, back = ARGV[1], 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local created = redis.call('HGET', KEYS[1], id)
  if created then
    redis.call('HDEL', KEYS[1], id)
    local key = p .. 'task:' .. id
    local status = redis.call('HGET', key, 'status')
    if status == 'queued' or status == 'processing' then
      if status == 'processing' then
        redis.call('HSET', key, 'status', 'queued')
        redis.call('HDEL', key, 'server_id')
        redis.call('ZREM', p .. 'status:processing', id)
        redis.call('ZADD', p .. 'status:queued', created, id)
      end
      redis.call('ZADD', p .. 'queue', created, id)
      back = back + 1
    end
  end
end
return back
"""

#: Take one slot on a node unless all are taken (a dead gateway's ghosts count as taken).
#: KEYS: inflight hash, this gateway's reservations, ghosts. ARGV: server_id, slots.
#: Returns the node's new count, or -1 (full).
ACQUIRE = """
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local ghost = redis.call('HGET', KEYS[3], ARGV[1])
if ghost then
  local count, untl = string.match(ghost, '([^:]+):([^:]+)')
  local t = redis.call('TIME')
  if tonumber(untl) > tonumber(t[1]) then n = n + tonumber(count) else redis.call('HDEL', KEYS[3], ARGV[1]) end
end
if n >= tonumber(ARGV[2]) then return -1 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""

#: Give a slot back, only if this gateway still holds one there (a reaper may have taken
#: it back already). KEYS: inflight, reservations. ARGV: server_id. Returns the new count.
RELEASE = """
local mine = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if mine <= 0 then return tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') end
if mine == 1 then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HINCRBY', KEYS[2], ARGV[1], -1) end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]); return 0 end
return n
"""

#: A dead (or stopping) gateway's claims go back to the shared queue and its node slots
#: are freed. Refused while its heartbeat lives, unless ARGV[3] is '1' (its own shutdown).
#: A dead gateway's jobs may still run on their nodes (nobody told the node to stop): they
#: stay counted as ghosts for ARGV[4] s, or until the node reports itself idle.
#: ARGV: prefix, gid, force, ghost seconds (0: none). Returns the tasks put back, or -1.
REAP = """
local p, gid = ARGV[1], ARGV[2]
local g = p .. 'gw:' .. gid
if ARGV[3] ~= '1' and redis.call('EXISTS', g .. ':alive') == 1 then return -1 end
local res = redis.call('HGETALL', g .. ':res')
local now = tonumber(redis.call('TIME')[1])
local hold = tonumber(ARGV[4])
for i = 1, #res, 2 do
  local held = tonumber(res[i + 1])
  local n = redis.call('HINCRBY', p .. 'inflight', res[i], -held)
  if n <= 0 then redis.call('HDEL', p .. 'inflight', res[i]) end
  if hold > 0 and held > 0 then
    local count = held
    local ghost = redis.call('HGET', p .. 'ghosts', res[i])
    if ghost then
      local c, untl = string.match(ghost, '([^:]+):([^:]+)')
      if tonumber(untl) > now then count = count + tonumber(c) end
    end
    redis.call('HSET', p .. 'ghosts', res[i], count .. ':' .. (now + hold))
  end
end
local claimed = redis.call('HGETALL', g .. ':claimed')
local back = 0
for i = 1, #claimed, 2 do
  local id = claimed[i]
  local key = p .. 'task:' .. id
  local status = redis.call('HGET', key, 'status')
  if status == 'queued' or status == 'processing' then
    if status == 'processing' then
      local created = redis.call('HGET', key, 'created_at')
      redis.call('HSET', key, 'status', 'queued')
      redis.call('HDEL', key, 'server_id')
      redis.call('ZREM', p .. 'status:processing', id)
      redis.call('ZADD', p .. 'status:queued', created, id)
    end
    redis.call('ZADD', p .. 'queue', claimed[i + 1], id)
    back = back + 1
  end
end
redis.call('DEL', g .. ':res', g .. ':claimed', g .. ':alive')
redis.call('SREM', p .. 'gateways', gid)
return back
"""

#: Apply a registration :func:`identity.decide` made from a read of the records: update the
#: node it names, or mint the next id (INCR). It first checks that what the decision read is
#: unchanged (compare and set) and answers {'retry'} when not. A key is attached, never replaced.
#: ARGV: prefix, ip, port, node_key, slots, weight, info JSON, new token, now,
#:       sid by key, its record, sid at the address, its record (each '' for none),
#:       sid to update ('' for a new node), '1' to rotate the token.
#: Returns {record JSON, created 0/1, previous address or ''}.
REGISTER = """
local p, ip, port, nkey = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local slots, weight, info, token, now = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local key_sid, key_raw, addr_sid, addr_raw = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local sid, rotate = ARGV[14], ARGV[15] == '1'
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
  if nkey ~= '' and rec.node_key == cjson.null then rec.node_key = nkey end
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
"""

#: ARGV: prefix, server_id. Returns 1 if the node was there.
DELETE_NODE = """
local p, sid = ARGV[1], ARGV[2]
local raw = redis.call('HGET', p .. 'nodes', sid)
if not raw then return 0 end
local rec = cjson.decode(raw)
local addr = rec.ip .. ':' .. rec.port
if redis.call('HGET', p .. 'node_addr', addr) == sid then redis.call('HDEL', p .. 'node_addr', addr) end
if rec.node_key ~= cjson.null and redis.call('HGET', p .. 'node_key', rec.node_key) == sid then
  redis.call('HDEL', p .. 'node_key', rec.node_key)
end
redis.call('HDEL', p .. 'nodes', sid)
redis.call('HDEL', p .. 'health', sid)
return 1
"""

#: Unregistered: the record stays (id, key, address, token), marked offline and down.
#: ARGV: prefix, server_id. Returns 1 if the node was there.
SET_OFFLINE = """
local p, sid = ARGV[1], ARGV[2]
local raw = redis.call('HGET', p .. 'nodes', sid)
if not raw then return 0 end
local rec = cjson.decode(raw)
rec.offline = true
redis.call('HSET', p .. 'nodes', sid, cjson.encode(rec))
local hraw = redis.call('HGET', p .. 'health', sid)
local h = hraw and cjson.decode(hraw) or {failures = 0, completed = 0, failed = 0, health = {}}
h.healthy, h.last_error = false, 'offline: unregistered'
redis.call('HSET', p .. 'health', sid, cjson.encode(h))
return 1
"""

#: ARGV: prefix, server_id, '1'/'0'.
SET_DRAINING = """
local raw = redis.call('HGET', ARGV[1] .. 'nodes', ARGV[2])
if not raw then return 0 end
local rec = cjson.decode(raw)
rec.draining = ARGV[3] == '1'
redis.call('HSET', ARGV[1] .. 'nodes', ARGV[2], cjson.encode(rec))
return 1
"""

#: A health outcome, shared by every gateway. ARGV: prefix, server_id, ok '1'/'0', report JSON
#: or '', error, threshold, now, counter ('completed', 'failed' or ''), is a check '1'/'0'.
#: Returns 1 when the node went up, -1 when it went down, 0 otherwise.
HEALTH = """
local p, sid = ARGV[1], ARGV[2]
local node = redis.call('HGET', p .. 'nodes', sid)
-- Gone, or offline (a probe or a job that was under way when it unregistered): no change.
if not node or cjson.decode(node).offline == true then return 0 end
local raw = redis.call('HGET', p .. 'health', sid)
local h = raw and cjson.decode(raw) or {healthy = false, failures = 0, completed = 0, failed = 0, health = {}}
local was = h.healthy
if ARGV[9] == '1' then h.last_check = tonumber(ARGV[7]) end
if ARGV[8] ~= '' then h[ARGV[8]] = (h[ARGV[8]] or 0) + 1 end
if ARGV[3] == '1' then
  if ARGV[4] ~= '' then
    h.health = cjson.decode(ARGV[4])
    -- The node says it runs nothing: no dead gateway's job is left there.
    if tonumber(h.health.busy) == 0 and (tonumber(h.health.queued) or 0) == 0 then
      redis.call('HDEL', p .. 'ghosts', sid)
    end
  end
  h.failures, h.last_error, h.healthy = 0, cjson.null, true
else
  h.failures = (h.failures or 0) + 1
  h.last_error = ARGV[5]
  if h.healthy and h.failures >= tonumber(ARGV[6]) then h.healthy = false end
end
redis.call('HSET', p .. 'health', sid, cjson.encode(h))
if h.healthy and not was then return 1 end
if was and not h.healthy then return -1 end
return 0
"""

#: Take or keep a lease. KEYS: the lease. ARGV: holder, ttl ms. Returns 1 while held.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1 end
return 0
"""

#: Token bucket. KEYS: the bucket. ARGV: rate per s, burst, take '1'/'0'. Returns the
#: seconds to wait as a string ('0' when a token was there, and taken if asked).
BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(v[1]), tonumber(v[2])
if not tokens then
  if ARGV[3] ~= '1' then return '0' end
  tokens, stamp = burst, now
end
tokens = math.min(burst, tokens + (now - stamp) * rate)
local wait = 0
if tokens >= 1 then
  if ARGV[3] == '1' then tokens = tokens - 1 end
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


def unavailable(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn any Redis error into :class:`StoreUnavailable` (a 503 a user can read)."""

    @wraps(fn)
    async def call(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return await fn(self, *args, **kwargs)
        except RedisError as exc:
            # redis-py may turn a cancellation mid-command into a connection error: a task
            # being cancelled (a gateway stopping) must stop, not retry.
            task = asyncio.current_task()
            if task is not None and getattr(task, "cancelling", lambda: 0)():
                raise asyncio.CancelledError from exc
            raise StoreUnavailable.from_error(exc) from exc

    return call


def _string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, TaskStatus):
        return value.value
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _task(data: dict[str, str]) -> TaskRecord:
    values: dict[str, Any] = dict(data)
    for name in _FLOATS:
        if name in values:
            values[name] = float(values[name])
    for name in _INTS:
        if name in values:
            values[name] = int(values[name])
    values["status"] = TaskStatus(values["status"])
    values["params"] = json.loads(values.get("params") or "{}")
    return TaskRecord(**values)


def _node(raw: str) -> tuple[int, NodeRecord]:
    data = json.loads(raw)
    info = data.get("info")
    record = NodeRecord(
        server_id=data["server_id"], ip=data["ip"], port=int(data["port"]), node_token=data["node_token"],
        node_key=data.get("node_key"), slots=int(data.get("slots") or 1), weight=int(data.get("weight") or 1),
        draining=bool(data.get("draining")), offline=bool(data.get("offline")),
        registered_at=float(data.get("registered_at") or 0),
        updated_at=float(data.get("updated_at") or 0), info=info if isinstance(info, dict) else {},
    )
    return int(data.get("ordinal") or 0), record


class RedisStore:
    """Tasks, nodes, the queue and node slots in Redis. Create with :meth:`open`.

    ``gateway_id`` names this process in the claim and reservation keys; it is new at
    every start, so a restarted gateway never mistakes a dead one's claims for its own.
    """

    #: What the dispatcher treats as "the store failed" (no node to blame).
    ERRORS: tuple[type[BaseException], ...] = (StoreUnavailable,)

    def __init__(self, client: aioredis.Redis, prefix: str, gateway_id: str, url: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.gateway_id = gateway_id
        self.url = redacted_url(url)
        p = prefix
        self.k_queue = p + "queue"
        self.k_inflight = p + "inflight"
        self.k_ghosts = p + "ghosts"
        self.k_gateways = p + "gateways"
        self.k_claimed = f"{p}gw:{gateway_id}:claimed"
        self.k_res = f"{p}gw:{gateway_id}:res"
        self.k_alive = f"{p}gw:{gateway_id}:alive"
        self.k_lease = p + "lease:health"
        reg = client.register_script
        self._update = reg(UPDATE_TASK)
        self._delete = reg(DELETE_TASK)
        self._claim = reg(CLAIM)
        self._unclaim = reg(UNCLAIM)
        self._acquire = reg(ACQUIRE)
        self._release = reg(RELEASE)
        self._reap = reg(REAP)
        self._register = reg(REGISTER)
        self._delete_node = reg(DELETE_NODE)
        self._draining = reg(SET_DRAINING)
        self._offline = reg(SET_OFFLINE)
        self._health = reg(HEALTH)
        self._lease = reg(LEASE)
        self._bucket = reg(BUCKET)

    @classmethod
    async def open(cls, url: str, prefix: str, gateway_id: str, *, timeout: float = 2.0) -> RedisStore:
        """Connect and check that Redis answers (raise :class:`StoreUnavailable` if not)."""
        # Short timeouts: with Redis away a request gets its 503 in seconds, not minutes;
        # the pool reconnects by itself on the next command once Redis is back.
        # One quick retry: a pooled connection that Redis closed (it restarted) is replaced
        # without the user seeing it; no long backoff: with Redis away, a fast 503.
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.02), 2,
                      supported_errors=(RedisConnectionError, RedisTimeoutError))
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout,
                                         socket_timeout=timeout, health_check_interval=30, retry=retry)
        store = cls(client, prefix, gateway_id, url)
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise StoreUnavailable.from_error(exc, url=store.url) from exc
        return store

    async def close(self) -> None:
        await self.redis.aclose()

    def _task_key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    # -- tasks ---------------------------------------------------------------------------

    @unavailable
    async def insert_task(self, task: TaskRecord | Callable[[], TaskRecord]) -> TaskRecord:
        """Store the task and put it in the shared queue, in one transaction. ``task`` may be
        a function that builds the record (in the executor: it may do file I/O)."""
        if callable(task):
            task = await asyncio.get_running_loop().run_in_executor(None, task)
        fields = {
            "task_id": task.task_id, "status": task.status.value, "created_at": repr(task.created_at),
            "updated_at": repr(task.updated_at), "input_mime": task.input_mime, "input_bytes": str(task.input_bytes),
            "width": str(task.width), "height": str(task.height), "params": json.dumps(task.params),
            "attempts": str(task.attempts),
        }
        for name in ("server_id", "result_mime", "result_bytes", "error", "owner", "started_at", "finished_at"):
            value = _string(getattr(task, name))
            if value is not None:
                fields[name] = value
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._task_key(task.task_id), mapping=fields)
            pipe.zadd(f"{self.prefix}status:{task.status.value}", {task.task_id: task.created_at})
            if task.status is TaskStatus.QUEUED:
                pipe.zadd(self.k_queue, {task.task_id: task.created_at})
            if task.status.value in FINISHED:
                pipe.zadd(f"{self.prefix}done", {task.task_id: task.updated_at})
            if task.owner:  # a WeChat user's own list of tasks
                pipe.zadd(f"{self.prefix}owner:{task.owner}", {task.task_id: task.created_at})
            await pipe.execute()
        return task

    _UPDATABLE = frozenset(
        {"status", "server_id", "attempts", "result_mime", "result_bytes", "error", "started_at", "finished_at"}
    )

    @unavailable
    async def update_task(self, task_id: str, *, prepare: Callable[[], dict[str, Any]] | None = None,
                          **changes: Any) -> None:
        """Change a task's fields. ``prepare``, if given, runs first (in the executor: it may
        do file I/O) and returns more changes; what it raises, this raises."""
        if prepare is not None:
            changes = {**changes, **await asyncio.get_running_loop().run_in_executor(None, prepare)}
        unknown = set(changes) - self._UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        encoded = json.dumps({k: _string(v) for k, v in changes.items()})
        await self._update(keys=[self._task_key(task_id), self.k_claimed],
                           args=[self.prefix, task_id, encoded, repr(time.time())])

    def peek_task(self, task_id: str) -> TaskRecord | None:
        """Nothing is cached here: another gateway may have changed any task."""
        return None

    @unavailable
    async def get_task(self, task_id: str) -> TaskRecord | None:
        # No cache: another gateway may have changed the task a moment ago.
        data = await self.redis.hgetall(self._task_key(task_id))
        return _task(data) if data else None

    async def _tasks(self, ids: Sequence[str]) -> list[TaskRecord]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self._task_key(task_id))
            rows = await pipe.execute()
        return [_task(row) for row in rows if row]

    @unavailable
    async def list_tasks(
        self, statuses: Sequence[TaskStatus], limit: int = 1_000_000, *, newest_first: bool = False
    ) -> list[TaskRecord]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in statuses:
                key = f"{self.prefix}status:{TaskStatus(status).value}"
                if newest_first:
                    pipe.zrevrange(key, 0, limit - 1, withscores=True)
                else:
                    pipe.zrange(key, 0, limit - 1, withscores=True)
            found = await pipe.execute()
        scored = sorted(((score, task_id) for rows in found for task_id, score in rows), reverse=newest_first)
        return await self._tasks([task_id for _score, task_id in scored[:limit]])

    @unavailable
    async def count_tasks(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in TaskStatus:
                pipe.zcard(f"{self.prefix}status:{status.value}")
            counts = await pipe.execute()
        return {status.value: int(n) for status, n in zip(TaskStatus, counts)}

    @unavailable
    async def expired_task_ids(self, before: float) -> list[str]:
        """Finished (completed or failed) tasks last touched before ``before``."""
        return list(await self.redis.zrangebyscore(f"{self.prefix}done", "-inf", f"({before!r}"))

    @unavailable
    async def delete_task(self, task_id: str) -> None:
        await self._delete(keys=[self._task_key(task_id)], args=[self.prefix, task_id])

    # -- the shared queue ----------------------------------------------------------------

    @unavailable
    async def queue_length(self) -> int:
        return int(await self.redis.zcard(self.k_queue))

    @unavailable
    async def claim(self, count: int) -> list[TaskRecord]:
        """Take the ``count`` oldest tasks of the shared queue for this gateway."""
        got = await self._claim(keys=[self.k_queue, self.k_claimed], args=[self.prefix, count])
        tasks = [_task(dict(zip(fields[0::2], fields[1::2]))) for fields in got[1::2]]
        return [t for t in tasks if t.status is TaskStatus.QUEUED or t.status is TaskStatus.PROCESSING]

    @unavailable
    async def claimed_ids(self) -> set[str]:
        return set(await self.redis.hkeys(self.k_claimed))

    @unavailable
    async def unclaim(self, task_ids: Sequence[str]) -> int:
        """Hand claimed tasks back to the shared queue (for any gateway to run)."""
        if not task_ids:
            return 0
        return int(await self._unclaim(keys=[self.k_claimed], args=[self.prefix, *task_ids]))

    # -- gateways: heartbeats and the reaper ------------------------------------------------

    @unavailable
    async def heartbeat(self, ttl: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.k_alive, str(time.time()), px=int(ttl * 1000))
            pipe.sadd(self.k_gateways, self.gateway_id)
            await pipe.execute()

    @unavailable
    async def dead_gateways(self) -> list[str]:
        others = [g for g in await self.redis.smembers(self.k_gateways) if g != self.gateway_id]
        if not others:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for gid in others:
                pipe.exists(f"{self.prefix}gw:{gid}:alive")
            alive = await pipe.execute()
        return [gid for gid, up in zip(others, alive) if not up]

    @unavailable
    async def reap(self, gateway_id: str, *, force: bool = False, ghost_seconds: float = 0.0) -> int:
        """Put ``gateway_id``'s claimed tasks back in the queue and free its node slots (its
        jobs still running there count as ghosts for ``ghost_seconds`` or until the node is
        idle). Returns the tasks put back, or -1 when that gateway is alive (and not ``force``)."""
        return int(await self._reap(keys=[], args=[self.prefix, gateway_id, "1" if force else "0",
                                                   int(ghost_seconds)]))

    @unavailable
    async def lease(self, ttl: float) -> bool:
        """Take or keep the health prober's lease for ``ttl`` s; True while this gateway holds it."""
        return bool(await self._lease(keys=[self.k_lease], args=[self.gateway_id, int(ttl * 1000)]))

    @unavailable
    async def drop_lease(self) -> None:
        if await self.redis.get(self.k_lease) == self.gateway_id:
            await self.redis.delete(self.k_lease)

    # -- node slots ----------------------------------------------------------------------

    @unavailable
    async def acquire_slot(self, server_id: str, slots: int) -> int:
        """Take a slot on the node: its new in-flight count, or -1 when all are taken."""
        return int(await self._acquire(keys=[self.k_inflight, self.k_res, self.k_ghosts], args=[server_id, slots]))

    @unavailable
    async def release_slot(self, server_id: str) -> int:
        return int(await self._release(keys=[self.k_inflight, self.k_res], args=[server_id]))

    # -- nodes ---------------------------------------------------------------------------

    #: Registrations of one node racing each other: a compare-and-set retries this often.
    REGISTER_TRIES = 20

    @unavailable
    async def register_node(
        self, ip: str, port: int, node_key: str | None, fields: dict[str, Any], new_token: str
    ) -> tuple[NodeRecord, bool, str | None]:
        """Read the records :func:`identity.decide` needs, decide, apply with compare-and-set."""
        address = f"{ip}:{port}"
        for _ in range(self.REGISTER_TRIES):
            key_sid = (await self.redis.hget(self.prefix + "node_key", node_key)) if node_key else None
            addr_sid = await self.redis.hget(self.prefix + "node_addr", address)
            key_raw, addr_raw = await self.redis.hmget(self.prefix + "nodes", [key_sid or "", addr_sid or ""])
            by_key = _node(key_raw)[1] if key_raw else None
            at_address = _node(addr_raw)[1] if addr_raw else None
            claim = identity.decide(address, node_key, by_key, at_address)
            answer = await self._register(keys=[], args=[
                self.prefix, ip, port, node_key or "", "" if fields["slots"] is None else fields["slots"],
                "" if fields["weight"] is None else fields["weight"], json.dumps(fields.get("info") or {}),
                new_token, repr(time.time()),
                key_sid or "", key_raw or "", addr_sid or "", addr_raw or "",
                claim.server_id or "", "1" if claim.rotate_token else "0",
            ])
            if answer[0] != "retry":
                encoded, created, previous = answer
                return _node(encoded)[1], bool(created), previous or None
        raise StoreUnavailable(f"registration of {address} kept racing other registrations; try again",
                               headers={"Retry-After": str(StoreUnavailable.RETRY_AFTER)})

    @unavailable
    async def fleet(self) -> tuple[list[NodeRecord], dict[str, dict[str, Any]], dict[str, int]]:
        """Every node (in id order), the shared health of each, the slots taken on each."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.prefix + "nodes")
            pipe.hgetall(self.prefix + "health")
            pipe.hgetall(self.k_inflight)
            pipe.hgetall(self.k_ghosts)
            nodes, health, inflight, ghosts = await pipe.execute()
        records = sorted((_node(raw) for raw in nodes.values()), key=lambda pair: pair[0])
        taken = {sid: int(n) for sid, n in inflight.items()}
        now = time.time()
        for sid, ghost in ghosts.items():  # a dead gateway's jobs count as taken (see ACQUIRE)
            count, _, until = ghost.partition(":")
            if float(until) > now:
                taken[sid] = taken.get(sid, 0) + int(count)
        return ([rec for _ordinal, rec in records], {sid: json.loads(raw) for sid, raw in health.items()}, taken)

    async def load_nodes(self) -> list[NodeRecord]:
        return (await self.fleet())[0]

    @unavailable
    async def delete_node(self, server_id: str) -> None:
        await self._delete_node(keys=[], args=[self.prefix, server_id])

    @unavailable
    async def set_node_offline(self, server_id: str) -> None:
        await self._offline(keys=[], args=[self.prefix, server_id])

    @unavailable
    async def set_node_draining(self, server_id: str, draining: bool) -> None:
        await self._draining(keys=[], args=[self.prefix, server_id, "1" if draining else "0"])

    @unavailable
    async def record_health(self, server_id: str, ok: bool, *, report: dict[str, Any] | None = None,
                            error: str = "", threshold: int = 3, counter: str = "", check: bool = False) -> int:
        """Record a health outcome for every gateway: 1 node went up, -1 went down, 0 no change."""
        return int(await self._health(keys=[], args=[
            self.prefix, server_id, "1" if ok else "0", json.dumps(report) if report is not None else "",
            error, threshold, repr(time.time()), counter, "1" if check else "0",
        ]))

    # -- runtime settings (photogate.runtime) ------------------------------------------------

    @unavailable
    async def load_settings(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The settings' version and every runtime change, read together."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.prefix + "settings_version")
            pipe.hgetall(self.prefix + "settings")
            version, raw = await pipe.execute()
        return int(version or 0), {key: json.loads(entry) for key, entry in raw.items()}

    @unavailable
    async def save_settings(self, values: Mapping[str, Any], who: str) -> int:
        """Store runtime changes and bump the version in one transaction; returns the version."""
        now = time.time()
        entries = {key: json.dumps({"value": value, "changed_at": now, "who": who}) for key, value in values.items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.prefix + "settings", mapping=entries)
            pipe.incr(self.prefix + "settings_version")
            return int((await pipe.execute())[-1])

    @unavailable
    async def drop_settings(self, keys: Sequence[str]) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.prefix + "settings", *keys)
            pipe.incr(self.prefix + "settings_version")
            return int((await pipe.execute())[-1])

    @unavailable
    async def settings_version(self) -> int:
        return int(await self.redis.get(self.prefix + "settings_version") or 0)

    # -- rate limits ---------------------------------------------------------------------

    @unavailable
    async def bucket(self, name: str, key: str, rate: float, burst: float, take: bool) -> float:
        wait = await self._bucket(keys=[f"{self.prefix}rl:{name}:{key}"], args=[repr(rate), repr(burst),
                                                                             "1" if take else "0"])
        return float(wait)
