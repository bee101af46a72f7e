"""WeChat records in Redis, for several gateways sharing one Redis.

Every credit change is one Lua script (the ``*.lua`` files beside this module), so a credit is
never granted or spent twice whatever arrives at which gateway. Keys (``P`` is
``storage.redis_prefix``)::

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
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT

from ...storage.redis.store import unavailable
from .protocol import CREATED, REFUNDING, Order

_ORDER_FIELDS = [f.name for f in fields(Order)]
_ORDER_INTS = {"amount", "credits"}
_ORDER_FLOATS = {"created_at", "updated_at", "paid_at"}


def _lua(name: str) -> str:
    """The Lua script ``name.lua`` beside this module."""
    return (Path(__file__).parent / f"{name}.lua").read_text(encoding="utf-8")


def _text(value: bytes | str) -> str:
    """A reply as text (the client decodes replies: ``decode_responses=True``)."""
    return value.decode() if isinstance(value, bytes) else value


def _texts(values: Iterable[object]) -> list[str]:
    """Members (of a sorted set or a set) as text."""
    texts = []
    for value in values:
        if not isinstance(value, (bytes, str)):
            raise TypeError(f"a Redis member: expected text, got {type(value).__name__}")
        texts.append(_text(value))
    return texts


def _s(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _order(data: Mapping[bytes | str, bytes | str]) -> Order:
    text = {_text(k): _text(v) for k, v in data.items()}
    values: dict[str, Any] = {}
    for name in _ORDER_FIELDS:
        raw = text.get(name)
        if raw is None:
            continue
        values[name] = int(raw) if name in _ORDER_INTS else float(raw) if name in _ORDER_FLOATS else raw
    return Order(**values)


class RedisWechatRecords:
    """:class:`~.protocol.WechatRecords` in Redis, shared by every gateway; every credit change
    one Lua script (``*.lua`` beside this module)."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.redis = client
        self.p = prefix
        reg = client.register_script
        self._charge, self._refund_charge = reg(_lua("charge")), reg(_lua("refund_charge"))
        self._update_order, self._mark_paid = reg(_lua("update_order")), reg(_lua("mark_paid"))
        self._mark_closed, self._begin_refund = reg(_lua("mark_closed")), reg(_lua("begin_refund"))
        self._undo_refund, self._refund_succeeded = reg(_lua("undo_refund")), reg(_lua("refund_succeeded"))

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
        openid = await self.redis.get(f"{self.p}wx:session:{token_hash}")
        return None if openid is None else _text(openid)

    async def purge_sessions(self) -> int:
        """Sessions expire in Redis by themselves."""
        return 0

    @unavailable
    async def credits(self, openid: str) -> int:
        return int(await self.redis.hget(f"{self.p}wx:user:{openid}", "credits") or 0)

    # -- orders ------------------------------------------------------------------------------------

    @unavailable
    async def insert_order(self, order: Order) -> None:
        mapping: dict[EncodableT, EncodableT] = {
            k: v for k, v in ((k, _s(v)) for k, v in asdict(order).items()) if v is not None}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}wx:order:{order.out_trade_no}", mapping=mapping)
            pipe.zadd(f"{self.p}wx:orders:{order.openid}", {order.out_trade_no: order.created_at})
            if order.state == CREATED:
                pipe.zadd(f"{self.p}wx:orders:created", {order.out_trade_no: order.created_at})
            await pipe.execute()

    @unavailable
    async def update_order(self, out_trade_no: str, **changes: str | None) -> None:
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
        return await self._orders(_texts(await self.redis.zrevrange(f"{self.p}wx:orders:{openid}", 0, limit - 1)))

    @unavailable
    async def stale_orders(self, before: float, limit: int = 100) -> list[Order]:
        numbers = await self.redis.zrangebyscore(f"{self.p}wx:orders:created", "-inf", f"({before!r}", start=0,
                                                 num=limit)
        return [o for o in await self._orders(_texts(numbers)) if o.state == CREATED]

    @unavailable
    async def pending_refunds(self, before: float, limit: int = 100) -> list[Order]:
        numbers = await self.redis.zrangebyscore(f"{self.p}wx:orders:refunding", "-inf", f"({before!r}", start=0,
                                                 num=limit)
        return [o for o in await self._orders(_texts(numbers)) if o.state == REFUNDING and o.out_refund_no]

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
        task_ids = sorted(_texts(await self.redis.smembers(f"{self.p}wx:charged")))
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(f"{self.p}task:{task_id}", "status")
            statuses = await pipe.execute()
        return [t for t, status in zip(task_ids, statuses) if status == "failed"]

    @unavailable
    async def user_tasks(self, openid: str, limit: int = 20) -> list[dict[str, Any]]:
        task_ids = _texts(await self.redis.zrevrange(f"{self.p}owner:{openid}", 0, limit - 1))
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

