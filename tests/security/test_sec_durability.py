"""Durability against a power cut (DESIGN §9): what the SIGKILL tests cannot see.

A killed process loses nothing the kernel already holds, so the restart tests pass even when
nothing reaches the disk. A power cut loses what was not synced: SQLite must run with
``synchronous=FULL`` (in WAL mode, NORMAL may drop the last commits), and a published photo
must be fsynced, then renamed, then its directory fsynced (or the rename may be lost)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from photogate.blobs import BlobStore
from photogate.storage.sqlite.store import SQLiteStore


async def test_the_task_store_syncs_every_commit(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "gateway.db")
    try:
        level = await store.run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        mode = await store.run(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        await store.close()
    assert (mode, level) == ("wal", 2), "synchronous must be FULL (2): NORMAL may lose commits to a power cut"


async def test_a_published_photo_and_its_rename_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    blobs = BlobStore(tmp_path / "blobs")
    writer = blobs.result_writer("0" * 32)
    await writer.write(b"\x89PNG" + b"x" * 100)
    await writer.commit()
    final = writer.final
    assert final.read_bytes().startswith(b"\x89PNG")
    # The file's data (under its temporary name), then the directory holding the new name.
    assert synced == [str(writer.partial), str(final.parent)], synced
