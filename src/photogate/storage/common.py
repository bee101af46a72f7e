"""What both backends say the same way: which task fields may change, and which errors mean
"the store failed"."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from ..errors import StoreUnavailable

#: What the dispatcher treats as "the store failed" (its disk is full, Redis is away): no node
#: is to blame. SQLite raises its own errors; the Redis backend turns every Redis error into
#: :class:`~photogate.errors.StoreUnavailable`.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, StoreUnavailable)

#: The task fields :meth:`~photogate.storage.protocols.TaskStore.update_task` may change
#: (``updated_at`` is the store's own).
UPDATABLE_TASK_FIELDS = frozenset(
    {"status", "server_id", "attempts", "result_mime", "result_bytes", "error", "started_at", "finished_at"}
)


def check_updatable(fields: Iterable[str]) -> None:
    """Raise :class:`ValueError` naming any field :meth:`update_task` may not change."""
    unknown = set(fields) - UPDATABLE_TASK_FIELDS
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
