"""API keys in SQLite: a table in the gateway's own SQLite file, on the store's thread."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..storage.protocols import SQLRunner
from .protocol import MEGAPIXELS_EXHAUSTED, OK, PHOTOS_EXHAUSTED, UNKNOWN, KeyRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    priority_class TEXT NOT NULL,
    photos_per_day INTEGER,
    megapixels_per_day REAL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    day INTEGER NOT NULL DEFAULT 0,
    used_photos INTEGER NOT NULL DEFAULT 0,
    used_megapixels REAL NOT NULL DEFAULT 0
);
"""
_COLUMNS = ("id, key_hash, name, priority_class, photos_per_day, megapixels_per_day, created_at, revoked_at,"
            " day, used_photos, used_megapixels")


def _record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(*row)


def insert(conn: sqlite3.Connection, r: KeyRecord) -> bool:
    try:
        conn.execute(f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (r.id, r.key_hash, r.name, r.priority_class, r.photos_per_day, r.megapixels_per_day,
                      r.created_at, r.revoked_at, r.day, r.used_photos, r.used_megapixels))
    except sqlite3.IntegrityError:
        return False
    return True


def get(conn: sqlite3.Connection, key_id: str) -> KeyRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return _record(row) if row else None


def consume(conn: sqlite3.Connection, key_id: str, day: int, megapixels: float) -> tuple[str, int, float]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        answer = _consume(conn, key_id, day, megapixels)
    except BaseException:
        if conn.in_transaction:  # SQLite already rolled back on "database or disk is full"
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return answer


def _consume(conn: sqlite3.Connection, key_id: str, day: int, megapixels: float) -> tuple[str, int, float]:
    record = get(conn, key_id)
    if record is None or record.revoked_at is not None:
        return UNKNOWN, 0, 0.0
    photos, used_mp = record.usage(day)
    if record.photos_per_day is not None and photos + 1 > record.photos_per_day:
        return PHOTOS_EXHAUSTED, photos, used_mp
    if record.megapixels_per_day is not None and used_mp + megapixels > record.megapixels_per_day:
        return MEGAPIXELS_EXHAUSTED, photos, used_mp
    conn.execute("UPDATE api_keys SET day = ?, used_photos = ?, used_megapixels = ? WHERE id = ?",
                 (day, photos + 1, used_mp + megapixels, key_id))
    return OK, photos + 1, used_mp + megapixels


def give_back(conn: sqlite3.Connection, key_id: str, day: int, megapixels: float) -> None:
    conn.execute("UPDATE api_keys SET used_photos = MAX(used_photos - 1, 0),"
                 " used_megapixels = MAX(used_megapixels - ?, 0) WHERE id = ? AND day = ?",
                 (megapixels, key_id, day))


class SQLiteKeyRecords:
    """:class:`~.protocol.KeyRecords` in the SQLite store's file, run on its thread."""

    def __init__(self, store: SQLRunner) -> None:
        self.store = store

    async def create_schema(self) -> None:
        await self.store.run(lambda conn: conn.executescript(SCHEMA))

    async def insert(self, record: KeyRecord) -> bool:
        return await self.store.run(lambda conn: insert(conn, record))

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self.store.run(lambda conn: get(conn, key_id))

    async def all(self) -> list[KeyRecord]:
        rows = await self.store.run(
            lambda conn: conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id").fetchall())
        return [_record(row) for row in rows]

    async def revoke(self, key_id: str, now: float) -> bool:
        changed = await self.store.run(lambda conn: conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id)).rowcount)
        return bool(changed)

    async def consume(self, key_id: str, day: int, megapixels: float) -> tuple[str, int, float]:
        return await self.store.run(lambda conn: consume(conn, key_id, day, megapixels))

    async def give_back(self, key_id: str, day: int, megapixels: float) -> None:
        await self.store.run(lambda conn: give_back(conn, key_id, day, megapixels))
