"""API keys in Redis, shared by every gateway. Keys (``P`` is ``storage.redis_prefix``)::

    P apikey:{id}   hash   the record's fields (absent: None); key_hash, never the key
    P apikeys       zset   every key id by created_at

Quota counting is one Lua script (``consume.lua``, ``give_back.lua`` beside this module), so
gateways sharing the Redis never let a key past its quota together; a revoke is one write that
every gateway's next lookup sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from redis.typing import EncodableT, FieldT

from ..storage.protocols import RedisKeyspace
from ..storage.redis.connection import text
from ..storage.redis.store import unavailable
from .protocol import KeyRecord

_INTS = {"photos_per_day", "day", "used_photos"}
_FLOATS = {"megapixels_per_day", "created_at", "revoked_at", "used_megapixels"}
_FIELDS = [f.name for f in fields(KeyRecord)]


def _lua(name: str) -> str:
    return (Path(__file__).parent / f"{name}.lua").read_text(encoding="utf-8")


def _texts(values: list[Any]) -> list[str]:
    return [text(v) for v in values]


def _record(reply: Mapping[bytes | str, bytes | str]) -> KeyRecord:
    data = {text(k): text(v) for k, v in reply.items()}
    values: dict[str, Any] = {"photos_per_day": None, "megapixels_per_day": None}  # absent: no limit
    for name in _FIELDS:
        raw = data.get(name)
        if raw is not None:
            values[name] = int(raw) if name in _INTS else float(raw) if name in _FLOATS else raw
    return KeyRecord(**values)


class RedisKeyRecords:
    """:class:`~.protocol.KeyRecords` in Redis; quota changes are Lua scripts."""

    def __init__(self, keyspace: RedisKeyspace) -> None:
        self.redis = keyspace.redis
        self.p = keyspace.prefix
        self._consume = self.redis.register_script(_lua("consume"))
        self._give_back = self.redis.register_script(_lua("give_back"))

    async def create_schema(self) -> None:
        """Nothing to create in Redis."""

    @unavailable
    async def insert(self, record: KeyRecord) -> bool:
        key = f"{self.p}apikey:{record.id}"
        mapping: dict[FieldT, EncodableT] = {
            k: repr(v) if isinstance(v, float) else str(v) for k, v in asdict(record).items() if v is not None}
        if not await self.redis.hsetnx(key, "id", record.id):
            return False
        await self.redis.hset(key, mapping=mapping)
        await self.redis.zadd(f"{self.p}apikeys", {record.id: record.created_at})
        return True

    @unavailable
    async def get(self, key_id: str) -> KeyRecord | None:
        data = await self.redis.hgetall(f"{self.p}apikey:{key_id}")
        return _record(data) if "key_hash" in data else None

    @unavailable
    async def all(self) -> list[KeyRecord]:
        ids = _texts(await self.redis.zrange(f"{self.p}apikeys", 0, -1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(f"{self.p}apikey:{key_id}")
            rows = await pipe.execute()
        return [_record(row) for row in rows if "key_hash" in row]

    @unavailable
    async def revoke(self, key_id: str, now: float) -> bool:
        key = f"{self.p}apikey:{key_id}"
        if not await self.redis.exists(key):
            return False
        return bool(await self.redis.hsetnx(key, "revoked_at", repr(now)))

    @unavailable
    async def consume(self, key_id: str, day: int, megapixels: float) -> tuple[str, int, float]:
        status, photos, used = await self._consume(keys=[], args=[self.p, key_id, day, repr(megapixels)])
        return str(status), int(photos), float(used)

    @unavailable
    async def give_back(self, key_id: str, day: int, megapixels: float) -> None:
        await self._give_back(keys=[], args=[self.p, key_id, day, repr(megapixels)])
