"""The Redis store the gateway opens (``storage.backend: redis``): several gateways share one Redis.

:class:`RedisStore` is assembled from one part per concern, each in its own module over the
same connection (:mod:`.connection`: the client, every key, the Lua scripts)::

    tasks.py     RedisTasks        TaskStore
    nodes.py     RedisNodes        NodeStore, FleetStateStore (shared health, node slots)
    settings.py  RedisSettings     SettingsStore
    queue.py     RedisSharedQueue  SharedQueueStore (claims, the reaper)
    cluster.py   RedisCluster      GatewayMembership (heartbeat, prober lease), RateBuckets
    sync.py      RedisSync         the registry's refresh: heartbeat, successes and fleet read in one
                                   round trip (over RedisNodes and RedisCluster)

The parts are mixins, not composed objects: each needs the same client, prefix and scripts,
and the gateway, the registry and the dispatcher call one object that is a whole
:class:`~photogate.storage.protocols.ClusterStore` (composition would mean a forwarding
method for every one of the ~30 protocol methods).
"""

from __future__ import annotations

from typing import ClassVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import StoreUnavailable
from ..common import STORE_ERRORS
from ..protocols import ClusterStore
from .connection import unavailable
from .queue import RedisSharedQueue
from .settings import RedisSettings
from .sync import RedisSync
from .tasks import RedisTasks

__all__ = ["RedisStore", "unavailable"]


class RedisStore(RedisTasks, RedisSync, RedisSettings, RedisSharedQueue, ClusterStore):
    """Tasks, nodes, settings, the shared queue, node slots and leases in Redis. Create with
    :meth:`open`."""

    ERRORS: ClassVar[tuple[type[BaseException], ...]] = STORE_ERRORS

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
