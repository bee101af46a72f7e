"""The embedded store: one SQLite file (WAL) for the node registry, its id counter, tasks and
runtime settings (``storage.backend: sqlite``, one gateway).

Writes run on one dedicated thread that owns the writing connection, many to a transaction
(:mod:`.groupcommit`: one WAL fsync makes a whole batch durable); reads run on a second
thread with a read-only connection (WAL lets it read while a batch is being written), so
SQLite never blocks the event loop and a read never waits behind a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ... import identity
from ...models import NodeRecord, TaskRecord, TaskStatus
from ..common import STORE_ERRORS, check_updatable
from ..protocols import SQLRunner, Store
from .groupcommit import GroupCommit

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    server_id TEXT PRIMARY KEY,
    ordinal INTEGER NOT NULL,
    ip TEXT NOT NULL,
    port INTEGER NOT NULL,
    node_key TEXT UNIQUE,
    node_token TEXT NOT NULL,
    slots INTEGER NOT NULL DEFAULT 1,
    weight INTEGER NOT NULL DEFAULT 1,
    draining INTEGER NOT NULL DEFAULT 0,
    registered_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    offline INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS nodes_addr ON nodes (ip, port);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    input_mime TEXT NOT NULL,
    input_bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    server_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result_mime TEXT,
    result_bytes INTEGER,
    error TEXT,
    owner TEXT,
    started_at REAL,
    finished_at REAL,
    priority_class TEXT
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, created_at);
CREATE INDEX IF NOT EXISTS tasks_updated ON tasks (updated_at);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, changed_at REAL NOT NULL,
                                     who TEXT NOT NULL);
"""

_TASK_COLUMNS = (
    "task_id, status, created_at, updated_at, input_mime, input_bytes, width, height, params, "
    "server_id, attempts, result_mime, result_bytes, error, owner, started_at, finished_at, priority_class"
)
_NODE_COLUMNS = (
    "server_id, ip, port, node_token, node_key, slots, weight, draining, registered_at, updated_at, info, offline"
)


def _task(row: Sequence[Any]) -> TaskRecord:
    return TaskRecord(
        task_id=row[0],
        status=TaskStatus(row[1]),
        created_at=row[2],
        updated_at=row[3],
        input_mime=row[4],
        input_bytes=row[5],
        width=row[6],
        height=row[7],
        params=json.loads(row[8]),
        server_id=row[9],
        attempts=row[10],
        result_mime=row[11],
        result_bytes=row[12],
        error=row[13],
        owner=row[14],
        started_at=row[15],
        finished_at=row[16],
        priority_class=row[17],
    )


def _node(row: Sequence[Any]) -> NodeRecord:
    return NodeRecord(
        server_id=row[0],
        ip=row[1],
        port=row[2],
        node_token=row[3],
        node_key=row[4],
        slots=row[5],
        weight=row[6],
        draining=bool(row[7]),
        registered_at=row[8],
        updated_at=row[9],
        info=json.loads(row[10]),
        offline=bool(row[11]),
    )


class SQLiteStore(Store, SQLRunner):
    """Registry and task store on one SQLite file. Create with :meth:`open`."""

    #: Recently used tasks kept in memory (write-through).
    CACHE_SIZE = 20_000
    ERRORS: ClassVar[tuple[type[BaseException], ...]] = STORE_ERRORS

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        self._reader: sqlite3.Connection | None = None
        self._writes = GroupCommit(self._executor, lambda: self.conn)
        self._cache: OrderedDict[str, TaskRecord] = OrderedDict()

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        store = cls(path)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(store._executor, store._open_sync)
            await loop.run_in_executor(store._reading, store._open_reader_sync)
        except BaseException:
            await store.close()
            raise
        return store

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits to a power cut, and a
        # client that got a task id must never lose that task (DESIGN §9 "Durability").
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        # A data dir from before nodes could be offline (unregister used to delete them).
        if "offline" not in {row[1] for row in conn.execute("PRAGMA table_info(nodes)")}:
            conn.execute("ALTER TABLE nodes ADD COLUMN offline INTEGER NOT NULL DEFAULT 0")
        # ... and from before tasks had a priority class.
        if "priority_class" not in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}:
            conn.execute("ALTER TABLE tasks ADD COLUMN priority_class TEXT")
        self._conn = conn

    def _open_reader_sync(self) -> None:
        reader = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
        reader.execute("PRAGMA busy_timeout=5000")
        self._reader = reader

    async def close(self) -> None:
        await self._writes.wait_idle()
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(self._reading, self._reader.close)
            self._reader = None
        if self._conn is not None:
            await loop.run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
        self._reading.shutdown(wait=True)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the next group commit; returns once it is durable."""
        return await self._writes.write(lambda _conn: fn(*args))

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(reader, *args)`` on the reading thread: sees every write answered so far."""
        def read() -> T:
            assert self._reader is not None, "store is closed"
            return fn(self._reader, *args)
        return await asyncio.get_running_loop().run_in_executor(self._reading, read)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store's writing thread, between two group commits
        (for modules with their own tables: ``fn`` commits its own transactions)."""
        return await self._writes.write(fn, alone=True)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is closed"
        return self._conn

    # -- nodes ---------------------------------------------------------------------------

    def _register_sync(
        self, ip: str, port: int, node_key: str | None, fields: dict[str, Any], new_token: str
    ) -> tuple[NodeRecord, bool, str | None]:
        """Apply :func:`identity.decide` in one transaction: update the node it names in place
        or mint the next id. Returns ``(record, created, previous_address)``."""
        conn = self.conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = None
            if node_key:
                row = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE node_key = ?", (node_key,)).fetchone()
            by_key = _node(row) if row else None
            row = conn.execute(
                f"SELECT {_NODE_COLUMNS} FROM nodes WHERE ip = ? AND port = ? ORDER BY ordinal LIMIT 1",
                (ip, port),
            ).fetchone()
            at_address = _node(row) if row else None
            claim = identity.decide(f"{ip}:{port}", node_key, by_key, at_address)
            info = json.dumps(fields.get("info", {}))
            if claim.server_id is not None:
                old = by_key if by_key is not None and by_key.server_id == claim.server_id else at_address
                assert old is not None
                conn.execute(
                    "UPDATE nodes SET ip = ?, port = ?, node_key = COALESCE(node_key, ?),"
                    " node_token = CASE WHEN ? THEN ? ELSE node_token END, slots = COALESCE(?, slots),"
                    " weight = COALESCE(?, weight), updated_at = ?, info = ?, offline = 0 WHERE server_id = ?",
                    (ip, port, claim.attach_key, claim.rotate_token, new_token, fields["slots"], fields["weight"],
                     now, info, old.server_id),
                )
                previous = old.address if (old.ip, old.port) != (ip, port) else None
                created = False
                server_id = old.server_id
            else:
                value = conn.execute("SELECT value FROM meta WHERE key = 'node_counter'").fetchone()
                ordinal = (int(value[0]) if value else 0) + 1
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('node_counter', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(ordinal),),
                )
                server_id = f"GPU-{ordinal:03d}"
                conn.execute(
                    f"INSERT INTO nodes (ordinal, {_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 0)",
                    (ordinal, server_id, ip, port, new_token, node_key, fields["slots"] or 1, fields["weight"] or 1,
                     now, now, info),
                )
                previous = None
                created = True
            row = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE server_id = ?", (server_id,)).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite already rolled back on "database or disk is full"
                conn.execute("ROLLBACK")
            raise
        return _node(row), created, previous

    async def register_node(
        self, ip: str, port: int, node_key: str | None, fields: dict[str, Any], new_token: str
    ) -> tuple[NodeRecord, bool, str | None]:
        # Alone: it runs its own transaction (BEGIN IMMEDIATE ... COMMIT).
        return await self._writes.write(lambda _conn: self._register_sync(ip, port, node_key, fields, new_token),
                                        alone=True)

    @staticmethod
    def _load_nodes_sync(conn: sqlite3.Connection) -> list[NodeRecord]:
        rows = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY ordinal").fetchall()
        return [_node(r) for r in rows]

    async def load_nodes(self) -> list[NodeRecord]:
        return await self._read(self._load_nodes_sync)

    async def delete_node(self, server_id: str) -> None:
        await self._write(self._exec, "DELETE FROM nodes WHERE server_id = ?", (server_id,))

    async def set_node_draining(self, server_id: str, draining: bool) -> None:
        await self._write(self._exec, "UPDATE nodes SET draining = ? WHERE server_id = ?", (int(draining), server_id))

    async def set_node_offline(self, server_id: str) -> None:
        """Unregistered: kept (id, key, address, token), but offline until it registers again."""
        await self._write(self._exec, "UPDATE nodes SET offline = 1 WHERE server_id = ?", (server_id,))

    def _exec(self, sql: str, params: Sequence[Any]) -> int:
        return self.conn.execute(sql, params).rowcount

    # -- runtime settings (photogate.runtime) ------------------------------------------------

    @staticmethod
    def _settings_version_sync(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'settings_version'").fetchone()
        return int(row[0]) if row else 0

    def _load_settings_sync(self, conn: sqlite3.Connection) -> tuple[int, dict[str, dict[str, Any]]]:
        # One read transaction: the version and the rows agree.
        conn.execute("BEGIN")
        try:
            rows = conn.execute("SELECT key, value, changed_at, who FROM settings").fetchall()
            version = self._settings_version_sync(conn)
        finally:
            conn.execute("COMMIT")
        changes = {key: {"value": json.loads(value), "changed_at": at, "who": who} for key, value, at, who in rows}
        return version, changes

    def _change_settings_sync(self, values: Mapping[str, Any], drop: Sequence[str], who: str) -> int:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            for key, value in values.items():
                conn.execute(
                    "INSERT INTO settings (key, value, changed_at, who) VALUES (?, ?, ?, ?) ON CONFLICT(key)"
                    " DO UPDATE SET value = excluded.value, changed_at = excluded.changed_at, who = excluded.who",
                    (key, json.dumps(value), now, who),
                )
            conn.executemany("DELETE FROM settings WHERE key = ?", [(key,) for key in drop])
            version = self._settings_version_sync(conn) + 1
            conn.execute("INSERT INTO meta (key, value) VALUES ('settings_version', ?)"
                         " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(version),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return version

    async def load_settings(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The settings' version and every runtime change ``{key: {value, changed_at, who}}``."""
        return await self._read(self._load_settings_sync)

    async def save_settings(self, values: Mapping[str, Any], who: str) -> int:
        """Store runtime changes in one transaction; returns the new version."""
        values = dict(values)
        return await self._writes.write(lambda _conn: self._change_settings_sync(values, (), who), alone=True)

    async def drop_settings(self, keys: Sequence[str]) -> int:
        dropped = tuple(keys)
        return await self._writes.write(lambda _conn: self._change_settings_sync({}, dropped, ""), alone=True)

    async def settings_version(self) -> int:
        return await self._read(self._settings_version_sync)

    # -- tasks ---------------------------------------------------------------------------

    def _remember(self, task: TaskRecord) -> None:
        self._cache[task.task_id] = dataclasses.replace(task)
        self._cache.move_to_end(task.task_id)
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)

    def _insert_sync(self, task: TaskRecord | Callable[[], TaskRecord]) -> TaskRecord:
        if callable(task):
            task = task()
        self.conn.execute(
            f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES ({', '.join('?' * 18)})",
            (
                task.task_id,
                task.status.value,
                task.created_at,
                task.updated_at,
                task.input_mime,
                task.input_bytes,
                task.width,
                task.height,
                json.dumps(task.params),
                task.server_id,
                task.attempts,
                task.result_mime,
                task.result_bytes,
                task.error,
                task.owner,
                task.started_at,
                task.finished_at,
                task.priority_class,
            ),
        )
        return task

    async def insert_task(self, task: TaskRecord | Callable[[], TaskRecord]) -> TaskRecord:
        """Store a task; returns once it is durable (its group commit is on disk). ``task``
        may be a function that builds the record on the store's writing thread, inside the
        batch (keep it cheap: no file I/O); what it raises, this raises, and nothing is stored."""
        task = await self._write(self._insert_sync, task)
        self._remember(task)
        return task

    def _update_sync(self, task_id: str, changes: dict[str, Any],
                     prepare: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
        if prepare is not None:
            changes = {**changes, **prepare()}
        check_updatable(changes)
        changes["updated_at"] = time.time()
        if isinstance(changes.get("status"), TaskStatus):
            changes["status"] = changes["status"].value
        assignments = ", ".join(f"{k} = ?" for k in changes)
        self.conn.execute(f"UPDATE tasks SET {assignments} WHERE task_id = ?", (*changes.values(), task_id))
        return changes

    async def update_task(self, task_id: str, *, prepare: Callable[[], dict[str, Any]] | None = None,
                          **changes: Any) -> None:
        """Change a task's fields; returns once the change is durable. ``prepare``, if given,
        runs first on the store's writing thread, inside the batch (keep it cheap: no file
        I/O), and returns more changes; what it raises, this raises, and nothing is changed."""
        changes = await self._write(self._update_sync, task_id, changes, prepare)
        cached = self._cache.get(task_id)
        if cached is not None:
            if "status" in changes:
                changes["status"] = TaskStatus(changes["status"])
            for key, value in changes.items():
                setattr(cached, key, value)

    @staticmethod
    def _get_task_sync(conn: sqlite3.Connection, task_id: str) -> TaskRecord | None:
        row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def peek_task(self, task_id: str) -> TaskRecord | None:
        """The cached record itself, for reading at once (no copy, no await); ``None`` when
        it is not cached. Never modify it: :meth:`get_task` gives a copy to keep."""
        return self._cache.get(task_id)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        # Every write goes through this object, so the cache is never stale; status polls
        # (the busiest request a gateway gets) are answered without a thread hop.
        cached = self._cache.get(task_id)
        if cached is not None:
            return dataclasses.replace(cached)
        task = await self._read(self._get_task_sync, task_id)
        if task is not None:
            self._remember(task)
        return task

    @staticmethod
    def _list_tasks_sync(conn: sqlite3.Connection, statuses: tuple[str, ...], limit: int,
                         newest_first: bool) -> list[TaskRecord]:
        marks = ", ".join("?" * len(statuses))
        order = "DESC" if newest_first else "ASC"
        rows = conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE status IN ({marks}) ORDER BY created_at {order} LIMIT ?",
            (*statuses, limit),
        ).fetchall()
        return [_task(r) for r in rows]

    async def list_tasks(
        self, statuses: Sequence[TaskStatus], limit: int = 1_000_000, *, newest_first: bool = False
    ) -> list[TaskRecord]:
        return await self._read(self._list_tasks_sync, tuple(s.value for s in statuses), limit, newest_first)

    @staticmethod
    def _count_sync(conn: sqlite3.Connection) -> dict[str, int]:
        rows = conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
        counts = {s.value: 0 for s in TaskStatus}
        counts.update({status: n for status, n in rows})
        return counts

    async def count_tasks(self) -> dict[str, int]:
        return await self._read(self._count_sync)

    @staticmethod
    def _expired_sync(conn: sqlite3.Connection, before: float) -> list[str]:
        rows = conn.execute(
            "SELECT task_id FROM tasks WHERE updated_at < ? AND status IN ('completed', 'failed')", (before,)
        ).fetchall()
        return [r[0] for r in rows]

    async def expired_task_ids(self, before: float) -> list[str]:
        """Finished (completed or failed) tasks last touched before ``before``."""
        return await self._read(self._expired_sync, before)

    async def delete_task(self, task_id: str) -> None:
        self._cache.pop(task_id, None)
        await self._write(self._exec, "DELETE FROM tasks WHERE task_id = ?", (task_id,))
