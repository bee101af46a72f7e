"""WeChat users, sessions, orders, refunds and credit charges: :class:`WechatRecords` and its
two backends, :mod:`.sqlite` and :mod:`.redis`, chosen by :func:`open_wechat_records`."""

from __future__ import annotations

from ...storage.protocols import Store
from ...storage.redis.store import RedisStore
from ...storage.sqlite.store import SQLiteStore
from .protocol import WechatRecords
from .redis import RedisWechatRecords
from .sqlite import SQLiteWechatRecords

__all__ = ["WechatRecords", "open_wechat_records"]


def open_wechat_records(store: Store) -> WechatRecords:
    """The WeChat records kept beside ``store``'s tasks (in the same SQLite file or Redis):
    the one place that branches on the storage backend."""
    if isinstance(store, RedisStore):
        return RedisWechatRecords(store.redis, store.prefix)
    if isinstance(store, SQLiteStore):
        return SQLiteWechatRecords(store)
    raise TypeError(f"no WeChat records for a {type(store).__name__}")
