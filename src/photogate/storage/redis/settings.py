"""Runtime settings in Redis (``photogate.runtime``): one hash and a version every gateway watches."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.typing import EncodableT, FieldT

from ..protocols import SettingsStore
from .connection import RedisConnection, texts, unavailable


class RedisSettings(RedisConnection, SettingsStore):
    """:class:`~photogate.storage.protocols.SettingsStore` on Redis."""

    @unavailable
    async def load_settings(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The settings' version and every runtime change, read together."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.settings_version)
            pipe.hgetall(self.keys.settings)
            version, raw = await pipe.execute()
        return int(version or 0), {key: json.loads(entry) for key, entry in texts(raw).items()}

    @unavailable
    async def save_settings(self, values: Mapping[str, Any], who: str) -> int:
        """Store runtime changes and bump the version in one transaction; returns the version."""
        now = time.time()
        entries: dict[FieldT, EncodableT] = {
            key: json.dumps({"value": value, "changed_at": now, "who": who}) for key, value in values.items()
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.settings, mapping=entries)
            pipe.incr(self.keys.settings_version)
            return int((await pipe.execute())[-1])

    @unavailable
    async def drop_settings(self, keys: Sequence[str]) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.settings, *keys)
            pipe.incr(self.keys.settings_version)
            return int((await pipe.execute())[-1])

    @unavailable
    async def settings_version(self) -> int:
        return int(await self.redis.get(self.keys.settings_version) or 0)
