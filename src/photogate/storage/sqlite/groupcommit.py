"""Group commit: writes from many coroutines made durable together.

Each write waits in a list; one batch at a time runs on the store's writer thread, every
write of it in its own SAVEPOINT inside one transaction (one that fails is undone alone),
then one COMMIT (one WAL fsync under ``synchronous=FULL``) makes them all durable, and only
then is each caller answered. While a batch runs, the next one gathers.

A write that manages its own transaction (``alone``) runs outside any batch, between two.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    alone: bool
    #: Set on the writer thread: ``(True, value)`` or ``(False, exception)``.
    outcome: tuple[bool, Any] = field(default=(False, None))


class GroupCommit:
    """Runs writes on ``conn`` in ``executor`` (one thread), many to a transaction."""

    def __init__(self, executor: Executor, conn: Callable[[], sqlite3.Connection]) -> None:
        self._executor = executor
        self._conn = conn
        self._waiting: list[_Write] = []
        self._drainer: asyncio.Task[None] | None = None
        #: How many batches have committed (for tests and logs).
        self.batches = 0

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, alone: bool = False) -> T:
        """Run ``fn(connection)`` in the next batch; return what it returned once that batch
        is committed (durable), or raise what it raised (then nothing of it is kept)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append(_Write(fn, future, alone))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain(), name="sqlite-group-commit")
        # The write goes on even when its caller stops waiting: it is answered all the same.
        return await asyncio.shield(future)

    async def wait_idle(self) -> None:
        """Until every write handed in so far is answered."""
        while self._drainer is not None:
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await loop.run_in_executor(self._executor, self._run, batch)
                except BaseException as exc:
                    # The executor is gone, or the loop is stopping: nobody hears of success.
                    failure = RuntimeError(f"the store stopped: {exc!r}")
                    batch += self._waiting
                    self._waiting = []
                    for write in batch:
                        write.outcome = (False, failure)
                    _answer(batch)
                    raise
                _answer(batch)
        finally:
            self._drainer = None

    # -- on the writer thread ----------------------------------------------------------------

    def _run(self, batch: list[_Write]) -> None:
        group: list[_Write] = []
        for write in batch:
            if not write.alone:
                group.append(write)
                continue
            self._commit(group)
            group = []
            try:
                write.outcome = (True, write.fn(self._conn()))
            except Exception as exc:
                write.outcome = (False, exc)
        self._commit(group)

    def _commit(self, group: list[_Write]) -> None:
        if not group:
            return
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in group:
                write.outcome = _in_savepoint(conn, write.fn)
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back ("database or disk is full"):
                    # nothing of this group is kept, so nobody in it hears of success.
                    raise write.outcome[1]
            conn.execute("COMMIT")
            self.batches += 1
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for write in group:
                write.outcome = (False, exc)


def _answer(batch: list[_Write]) -> None:
    for write in batch:
        if write.future.done():
            continue
        ok, value = write.outcome
        if ok:
            write.future.set_result(value)
        else:
            write.future.set_exception(value)


def _in_savepoint(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
    conn.execute("SAVEPOINT one_write")
    try:
        value = fn(conn)
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK TO one_write")
            conn.execute("RELEASE one_write")
        return False, exc
    conn.execute("RELEASE one_write")
    return True, value
