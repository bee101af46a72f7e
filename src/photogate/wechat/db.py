"""Where WeChat users, sessions, orders and credit charges live: one async interface, two backends.

:class:`SQLiteWechatDB` runs the functions of :mod:`photogate.wechat.store` on the SQLite
store's thread; :class:`RedisWechatDB` keeps the same records in Redis for several gateways
(issue 8), every credit change one Lua script, so a credit is never granted or spent twice
whatever arrives at which gateway. Keys (``P`` is ``storage.redis_prefix``)::

    P wx:user:{openid}        hash   unionid, credits, created_at, last_login_at
    P wx:session:{hash}       string openid, expiring with the session
    P wx:order:{no}           hash   an order's fields (absent: None)
    P wx:orders:{openid}      zset   a user's orders by created_at
    P wx:orders:created       zset   orders still ``created`` (the reconciler's sweep)
    P wx:orders:refunding     zset   orders ``refunding`` by when the refund began (the refund sweep)
    P wx:charge:{task_id}     hash   openid, credits, state, created_at, updated_at
    P wx:charged              set    task ids whose charge stands
    P wx:clawback:{no}        hash   credits a refund took back: openid, refund_id, granted, taken, shortfall
    P owner:{openid}          zset   a user's tasks by created_at (kept by the task store)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from typing import Any

from ..storage.redis.store import RedisStore, unavailable
from ..storage.sqlite.store import SQLiteStore
from . import store as db
from .store import CREATED, REFUNDING, Order


class SQLiteWechatDB:
    """The tables in the gateway's SQLite file, through ``SQLiteStore.run``."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def create_schema(self) -> None:
        await self.store.run(db.create_schema)

    def __getattr__(self, name: str) -> Any:
        fn = getattr(db, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.store.run(lambda conn: fn(conn, *args, **kwargs))

        return call


_ORDER_FIELDS = [f.name for f in fields(Order)]
_ORDER_INTS = {"amount", "credits"}
_ORDER_FLOATS = {"created_at", "updated_at", "paid_at"}

#: ARGV: prefix, openid, credits field, amount, task_id, now. Returns 1 if charged.
CHARGE = """
local user = ARGV[1] .. 'wx:user:' .. ARGV[2]
local amount = tonumber(ARGV[3])
if tonumber(redis.call('HGET', user, 'credits') or '0') < amount then return 0 end
redis.call('HINCRBY', user, 'credits', -amount)
redis.call('HSET', ARGV[1] .. 'wx:charge:' .. ARGV[4], 'openid', ARGV[2], 'credits', amount, 'state', 'charged',
           'created_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('SADD', ARGV[1] .. 'wx:charged', ARGV[4])
return 1
"""

#: ARGV: prefix, task_id, now. Returns the credits given back (0: none or done already).
REFUND_CHARGE = """
local charge = ARGV[1] .. 'wx:charge:' .. ARGV[2]
if redis.call('HGET', charge, 'state') ~= 'charged' then return 0 end
local openid, credits = unpack(redis.call('HMGET', charge, 'openid', 'credits'))
redis.call('HSET', charge, 'state', 'refunded', 'updated_at', ARGV[3])
redis.call('SREM', ARGV[1] .. 'wx:charged', ARGV[2])
local user = ARGV[1] .. 'wx:user:' .. openid
if redis.call('EXISTS', user) == 1 then redis.call('HINCRBY', user, 'credits', tonumber(credits)) end
return tonumber(credits)
"""

#: Change an order's fields. ARGV: prefix, no, JSON {field: string|null}, now. Returns 1 if found.
UPDATE_ORDER = """
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
for k, v in pairs(cjson.decode(ARGV[3])) do
  if v == cjson.null then redis.call('HDEL', key, k) else redis.call('HSET', key, k, v) end
end
redis.call('HSET', key, 'updated_at', ARGV[4])
if redis.call('HGET', key, 'state') ~= 'created' then redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2]) end
return 1
"""

#: Paid, once: the order's credits granted. ARGV: prefix, no, transaction_id, now. Returns 1 if it did.
MARK_PAID = """
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
local state = redis.call('HGET', key, 'state')
if state ~= 'created' and state ~= 'closed' and state ~= 'failed' then return 0 end
redis.call('HSET', key, 'state', 'paid', 'transaction_id', ARGV[3], 'paid_at', ARGV[4], 'updated_at', ARGV[4])
redis.call('HDEL', key, 'error')
redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2])
local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
local user = ARGV[1] .. 'wx:user:' .. openid
if redis.call('EXISTS', user) == 1 then redis.call('HINCRBY', user, 'credits', tonumber(credits)) end
return 1
"""

#: ARGV: prefix, no, now. Returns 1 if the order was ``created`` and is now ``closed``.
MARK_CLOSED = """
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('HGET', key, 'state') ~= 'created' then return 0 end
redis.call('HSET', key, 'state', 'closed', 'updated_at', ARGV[3])
redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2])
return 1
"""

#: ARGV: prefix, no, out_refund_no, force '1'/'0', now. Returns 'ok', 'state' or 'spent'.
BEGIN_REFUND = """
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('HGET', key, 'state') ~= 'paid' then return 'state' end
local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
credits = tonumber(credits)
local user = ARGV[1] .. 'wx:user:' .. openid
local have = tonumber(redis.call('HGET', user, 'credits') or '0')
if have >= credits then
  redis.call('HINCRBY', user, 'credits', -credits)
elseif ARGV[4] ~= '1' then
  return 'spent'
elseif redis.call('EXISTS', user) == 1 then
  redis.call('HSET', user, 'credits', 0)
end
redis.call('HSET', key, 'state', 'refunding', 'out_refund_no', ARGV[3], 'updated_at', ARGV[5])
redis.call('ZADD', ARGV[1] .. 'wx:orders:refunding', ARGV[5], ARGV[2])
return 'ok'
"""

#: ARGV: prefix, no, error, now.
UNDO_REFUND = """
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
if redis.call('HGET', key, 'state') ~= 'refunding' then return 0 end
redis.call('HSET', key, 'state', 'paid', 'error', ARGV[3], 'updated_at', ARGV[4])
redis.call('HDEL', key, 'out_refund_no')
redis.call('ZREM', ARGV[1] .. 'wx:orders:refunding', ARGV[2])
local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
local user = ARGV[1] .. 'wx:user:' .. openid
if redis.call('EXISTS', user) == 1 then redis.call('HINCRBY', user, 'credits', tonumber(credits)) end
return 1
"""


#: WeChat reports the order refunded. ARGV: prefix, no, refund_id, now.
#: Returns {taken, shortfall}, or {-1, 0} when it was refunded already or is unknown.
REFUND_SUCCEEDED = """
local key = ARGV[1] .. 'wx:order:' .. ARGV[2]
local state = redis.call('HGET', key, 'state')
if not state or state == 'refunded' then return {-1, 0} end
local taken, shortfall = 0, 0
if state == 'paid' then
  local openid, credits = unpack(redis.call('HMGET', key, 'openid', 'credits'))
  credits = tonumber(credits)
  local user = ARGV[1] .. 'wx:user:' .. openid
  taken = math.min(tonumber(redis.call('HGET', user, 'credits') or '0'), credits)
  shortfall = credits - taken
  if taken > 0 then redis.call('HINCRBY', user, 'credits', -taken) end
  redis.call('HSET', ARGV[1] .. 'wx:clawback:' .. ARGV[2], 'openid', openid, 'refund_id', ARGV[3],
             'granted', credits, 'taken', taken, 'shortfall', shortfall, 'created_at', ARGV[4])
end
redis.call('HSET', key, 'state', 'refunded', 'updated_at', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', key, 'refund_id', ARGV[3]) end
redis.call('ZREM', ARGV[1] .. 'wx:orders:created', ARGV[2])
redis.call('ZREM', ARGV[1] .. 'wx:orders:refunding', ARGV[2])
return {taken, shortfall}
"""


def _s(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _order(data: dict[str, str]) -> Order:
    values: dict[str, Any] = {}
    for name in _ORDER_FIELDS:
        raw = data.get(name)
        if raw is None:
            continue
        values[name] = int(raw) if name in _ORDER_INTS else float(raw) if name in _ORDER_FLOATS else raw
    return Order(**values)


class RedisWechatDB:
    """The same records in Redis, shared by every gateway."""

    def __init__(self, store: RedisStore) -> None:
        self.redis = store.redis
        self.p = store.prefix
        reg = self.redis.register_script
        self._charge, self._refund_charge = reg(CHARGE), reg(REFUND_CHARGE)
        self._update_order, self._mark_paid, self._mark_closed = reg(UPDATE_ORDER), reg(MARK_PAID), reg(MARK_CLOSED)
        self._begin_refund, self._undo_refund = reg(BEGIN_REFUND), reg(UNDO_REFUND)
        self._refund_succeeded = reg(REFUND_SUCCEEDED)

    async def create_schema(self) -> None:
        """Nothing to create in Redis."""

    # -- users and sessions ----------------------------------------------------------------------

    @unavailable
    async def login(self, openid: str, unionid: str | None, token_hash: str, ttl: float) -> None:
        now = repr(time.time())
        user = f"{self.p}wx:user:{openid}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(user, "credits", 0)
            pipe.hsetnx(user, "created_at", now)
            pipe.hset(user, "last_login_at", now)
            if unionid:
                pipe.hset(user, "unionid", unionid)
            pipe.set(f"{self.p}wx:session:{token_hash}", openid, px=max(int(ttl * 1000), 1))
            await pipe.execute()

    @unavailable
    async def session_openid(self, token_hash: str) -> str | None:
        return await self.redis.get(f"{self.p}wx:session:{token_hash}")  # type: ignore[no-any-return]

    async def purge_sessions(self) -> int:
        """Sessions expire in Redis by themselves."""
        return 0

    @unavailable
    async def credits(self, openid: str) -> int:
        return int(await self.redis.hget(f"{self.p}wx:user:{openid}", "credits") or 0)

    # -- orders ------------------------------------------------------------------------------------

    @unavailable
    async def insert_order(self, order: Order) -> None:
        mapping = {k: v for k, v in ((k, _s(v)) for k, v in asdict(order).items()) if v is not None}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}wx:order:{order.out_trade_no}", mapping=mapping)
            pipe.zadd(f"{self.p}wx:orders:{order.openid}", {order.out_trade_no: order.created_at})
            if order.state == CREATED:
                pipe.zadd(f"{self.p}wx:orders:created", {order.out_trade_no: order.created_at})
            await pipe.execute()

    @unavailable
    async def update_order(self, out_trade_no: str, **changes: Any) -> None:
        encoded = json.dumps({k: _s(v) for k, v in changes.items()})
        await self._update_order(keys=[], args=[self.p, out_trade_no, encoded, repr(time.time())])

    @unavailable
    async def get_order(self, out_trade_no: str) -> Order | None:
        data = await self.redis.hgetall(f"{self.p}wx:order:{out_trade_no}")
        return _order(data) if data else None

    async def _orders(self, numbers: list[str]) -> list[Order]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for no in numbers:
                pipe.hgetall(f"{self.p}wx:order:{no}")
            rows = await pipe.execute()
        return [_order(row) for row in rows if row]

    @unavailable
    async def user_orders(self, openid: str, limit: int = 20) -> list[Order]:
        return await self._orders(await self.redis.zrevrange(f"{self.p}wx:orders:{openid}", 0, limit - 1))

    @unavailable
    async def stale_orders(self, before: float, limit: int = 100) -> list[Order]:
        numbers = await self.redis.zrangebyscore(f"{self.p}wx:orders:created", "-inf", f"({before!r}", start=0,
                                                 num=limit)
        return [o for o in await self._orders(numbers) if o.state == CREATED]

    @unavailable
    async def pending_refunds(self, before: float, limit: int = 100) -> list[Order]:
        numbers = await self.redis.zrangebyscore(f"{self.p}wx:orders:refunding", "-inf", f"({before!r}", start=0,
                                                 num=limit)
        return [o for o in await self._orders(numbers) if o.state == REFUNDING and o.out_refund_no]

    @unavailable
    async def mark_paid(self, out_trade_no: str, transaction_id: str) -> bool:
        return bool(await self._mark_paid(keys=[], args=[self.p, out_trade_no, transaction_id, repr(time.time())]))

    @unavailable
    async def mark_closed(self, out_trade_no: str) -> bool:
        return bool(await self._mark_closed(keys=[], args=[self.p, out_trade_no, repr(time.time())]))

    @unavailable
    async def begin_refund(self, out_trade_no: str, out_refund_no: str, force: bool) -> str:
        return str(await self._begin_refund(keys=[], args=[self.p, out_trade_no, out_refund_no, "1" if force else "0",
                                                           repr(time.time())]))

    @unavailable
    async def undo_refund(self, out_trade_no: str, error: str) -> None:
        await self._undo_refund(keys=[], args=[self.p, out_trade_no, error, repr(time.time())])

    @unavailable
    async def refund_succeeded(self, out_trade_no: str, refund_id: str) -> tuple[int, int] | None:
        taken, shortfall = await self._refund_succeeded(keys=[], args=[self.p, out_trade_no, refund_id,
                                                                        repr(time.time())])
        return None if int(taken) < 0 else (int(taken), int(shortfall))

    # -- credits for tasks ---------------------------------------------------------------------------

    @unavailable
    async def charge(self, openid: str, task_id: str, amount: int) -> bool:
        return bool(await self._charge(keys=[], args=[self.p, openid, amount, task_id, repr(time.time())]))

    @unavailable
    async def refund_charge(self, task_id: str) -> int:
        return int(await self._refund_charge(keys=[], args=[self.p, task_id, repr(time.time())]))

    @unavailable
    async def failed_charged_tasks(self) -> list[str]:
        task_ids = sorted(await self.redis.smembers(f"{self.p}wx:charged"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(f"{self.p}task:{task_id}", "status")
            statuses = await pipe.execute()
        return [t for t, status in zip(task_ids, statuses) if status == "failed"]

    @unavailable
    async def user_tasks(self, openid: str, limit: int = 20) -> list[dict[str, Any]]:
        task_ids = await self.redis.zrevrange(f"{self.p}owner:{openid}", 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(f"{self.p}task:{task_id}", "status", "created_at", "error")
            rows = await pipe.execute()
        tasks = []
        for task_id, (status, created_at, error) in zip(task_ids, rows):
            if status is None:
                continue
            tasks.append({"task_id": task_id, "status": status, "created_at": float(created_at),
                          "result_url": f"/api/v1/download/{task_id}" if status == "completed" else None,
                          "error": error if status == "failed" else None})
        return tasks


def wechat_db(store: SQLiteStore | RedisStore) -> SQLiteWechatDB | RedisWechatDB:
    return RedisWechatDB(store) if isinstance(store, RedisStore) else SQLiteWechatDB(store)
