"""Opens the state store that ``storage.backend`` names, with what goes with it: the
registry, the task queue, how old a leftover partial file must be to be swept, and the
background work that backend needs. The only place that branches on the backend.

- ``sqlite`` (one gateway): the SQLite file under the data directory, the local registry,
  a :class:`~photogate.dispatch.queue.LocalQueue`;
- ``redis`` (several gateways): Redis, the shared registry (whose heartbeat runs in the
  background), a :class:`~photogate.dispatch.queue.SharedQueue`, and runtime settings
  re-read whenever another gateway changes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..dispatch.queue import LocalQueue, SharedQueue, TaskQueue, fair_weights
from ..registry import Registry
from .protocols import Store

if TYPE_CHECKING:
    from ..apikeys.protocol import KeyRecords
    from ..wechat.records.protocol import WechatRecords
    from .redis.store import RedisStore


@dataclass
class Backend:
    """An open state store and the parts built on it."""

    name: str
    store: Store
    registry: Registry
    queue: TaskQueue
    #: What the store raises when it cannot write (the dispatcher retries those tasks later).
    errors: tuple[type[BaseException], ...]
    #: Seconds a partial blob file must be old to be a leftover (``None``: every one is).
    partials_older_than: float | None = None
    #: Every how many seconds state other gateways change is re-read (``None``: none shares it).
    sync_interval: float | None = None
    #: Background work while the gateway runs: (task name, coroutine function).
    background: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = field(default_factory=list)
    #: A task's record is also its entry in a queue other gateways claim from (Redis): the
    #: photo's file must be durable before the record is written, not merely before the answer.
    records_are_queue_entries: bool = False
    #: The store the rate limits share between gateways, if any.
    shared: RedisStore | None = None
    #: Opens the WeChat records kept beside the tasks (same SQLite file, same Redis).
    wechat_records: Callable[[], WechatRecords] | None = None
    #: Opens the API-key records kept beside the tasks (same SQLite file, same Redis).
    key_records: Callable[[], KeyRecords] | None = None
    #: Fields for the ``gateway_started`` log event.
    describe: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def open_wechat_records(self) -> WechatRecords:
        """The WeChat records of this backend (``wechat:`` configured)."""
        assert self.wechat_records is not None, f"{self.name}: no WeChat records"
        return self.wechat_records()

    def open_key_records(self) -> KeyRecords:
        """The API-key records of this backend."""
        assert self.key_records is not None, f"{self.name}: no API-key records"
        return self.key_records()

    async def close(self) -> None:
        """Leave the shared state cleanly (if any), then close the store."""
        try:
            for close in self._closers:
                await close()
        finally:
            await self.store.close()


async def open_backend(config: Config) -> Backend:
    """Open the store ``config.storage.backend`` names and load its registry."""
    if config.storage.backend == "redis":
        backend = await _open_redis(config)
    else:
        backend = await _open_sqlite(config)
    try:
        await backend.registry.load()
    except BaseException:
        await backend.store.close()  # nothing was joined yet: there is nothing to leave
        raise
    return backend


async def _open_sqlite(config: Config) -> Backend:
    from ..apikeys.sqlite import SQLiteKeyRecords
    from ..wechat.records.sqlite import SQLiteWechatRecords
    from .sqlite.store import SQLiteStore

    store = await SQLiteStore.open(config.data_path / "photogate.db")
    registry = Registry(store, config.health_check.failure_threshold)
    return Backend("sqlite", store, registry, LocalQueue(store, fair_weights(config.access)),
                   errors=SQLiteStore.ERRORS, wechat_records=lambda: SQLiteWechatRecords(store),
                   key_records=lambda: SQLiteKeyRecords(store))


async def _open_redis(config: Config) -> Backend:
    from ..apikeys.redis import RedisKeyRecords
    from ..registry_redis import RedisRegistry
    from ..wechat.records.redis import RedisWechatRecords
    from .redis.store import RedisStore

    cfg = config.storage
    # Several gateways: state in Redis, photos on a directory they all mount.
    store = await RedisStore.open(cfg.redis_url, cfg.redis_prefix, uuid.uuid4().hex[:12])
    registry = RedisRegistry(store, config.health_check.failure_threshold, lease_ttl=cfg.redis_lease_ttl,
                              ghost_seconds=config.dispatch.timeout + config.dispatch.connect_timeout)
    return Backend(
        "redis", store, registry, SharedQueue(store, store, recover=registry.beat, weights=fair_weights(config.access)),
        errors=RedisStore.ERRORS,
        # Another gateway may be writing a .part right now: only old ones are leftovers.
        partials_older_than=3600.0,
        sync_interval=registry.sync_interval,
        background=[("shared-registry", registry.run)],
        records_are_queue_entries=True,
        shared=store,
        wechat_records=lambda: RedisWechatRecords(store.redis, store.prefix),
        key_records=lambda: RedisKeyRecords(store),
        describe={"backend": "redis", "redis": store.url, "gateway": store.gateway_id},
        _closers=[registry.close],
    )
