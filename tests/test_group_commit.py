"""Group commit (issue 17): many writes made durable by one commit, one write's failure undone
alone, reads never waiting behind a batch, and one directory fsync shared by every photo
renamed before it began."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from photogate.blobs import BlobStore
from photogate.models import TaskRecord, TaskStatus
from photogate.storage.sqlite.store import SQLiteStore


def _task(task_id: str) -> TaskRecord:
    now = time.time()
    return TaskRecord(task_id=task_id, status=TaskStatus.QUEUED, created_at=now, updated_at=now,
                      input_mime="image/png", input_bytes=123, width=64, height=48, params={})


async def _hold_writer(store: SQLiteStore) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Occupy the store's writing thread until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(10)

    holding = asyncio.ensure_future(store.run(hold))
    await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
    return release, holding


async def test_concurrent_writes_share_commits_and_all_survive_a_reopen(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "gateway.db")
    release, holding = await _hold_writer(store)
    before = store._writes.batches
    inserting = [asyncio.ensure_future(store.insert_task(_task(f"t{i:03d}"))) for i in range(50)]
    release.set()
    await holding
    await asyncio.gather(*inserting)
    batches = store._writes.batches - before
    await store.close()
    assert batches == 1, f"50 writes waiting together took {batches} commits"

    reopened = await SQLiteStore.open(tmp_path / "gateway.db")
    try:
        found = {t.task_id for t in await reopened.list_tasks([TaskStatus.QUEUED])}
    finally:
        await reopened.close()
    assert found == {f"t{i:03d}" for i in range(50)}


async def test_a_failing_write_is_undone_alone(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "gateway.db")
    try:
        await store.insert_task(_task("taken"))
        release, holding = await _hold_writer(store)
        first = asyncio.ensure_future(store.insert_task(_task("first")))
        twice = asyncio.ensure_future(store.insert_task(_task("taken")))  # the same id again: refused
        last = asyncio.ensure_future(store.update_task("taken", status=TaskStatus.PROCESSING, server_id="GPU-001"))
        release.set()
        await holding
        outcomes = await asyncio.gather(first, twice, last, return_exceptions=True)
    finally:
        await store.close()
    assert isinstance(outcomes[1], sqlite3.IntegrityError), outcomes
    assert not isinstance(outcomes[0], BaseException) and outcomes[2] is None, outcomes

    reopened = await SQLiteStore.open(tmp_path / "gateway.db")
    try:
        assert (await reopened.get_task("first")) is not None
        taken = await reopened.get_task("taken")
    finally:
        await reopened.close()
    assert taken is not None and (taken.status, taken.server_id) == (TaskStatus.PROCESSING, "GPU-001")


async def test_a_batch_whose_transaction_is_lost_tells_no_write_it_succeeded(tmp_path: Path) -> None:
    # "database or disk is full": SQLite rolls the whole transaction back, so every write of
    # the batch is gone, and every caller must hear of it.
    store = await SQLiteStore.open(tmp_path / "gateway.db")
    try:
        await store.insert_task(_task("victim"))

        def disk_full() -> dict[str, Any]:
            store.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")

        release, holding = await _hold_writer(store)
        first = asyncio.ensure_future(store.insert_task(_task("first")))
        failing = asyncio.ensure_future(store.update_task("victim", prepare=disk_full, error="x"))
        release.set()
        await holding
        outcomes = await asyncio.gather(first, failing, return_exceptions=True)
        assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
        # The store goes on: the next batch commits.
        await store.insert_task(_task("after"))
    finally:
        await store.close()
    reopened = await SQLiteStore.open(tmp_path / "gateway.db")
    try:
        assert await reopened.get_task("first") is None
        assert await reopened.get_task("after") is not None
    finally:
        await reopened.close()


async def test_reads_do_not_wait_behind_a_batch(tmp_path: Path) -> None:
    first = await SQLiteStore.open(tmp_path / "gateway.db")
    await first.insert_task(_task("stored"))
    await first.close()
    store = await SQLiteStore.open(tmp_path / "gateway.db")  # nothing cached
    try:
        release, holding = await _hold_writer(store)
        try:
            task = await asyncio.wait_for(store.get_task("stored"), 3)
            counts = await asyncio.wait_for(store.count_tasks(), 3)
        finally:
            release.set()
            await holding
    finally:
        await store.close()
    assert task is not None and task.task_id == "stored"
    assert counts["queued"] == 1


async def test_one_directory_fsync_serves_every_rename_made_before_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace
    blobs = BlobStore(tmp_path / "blobs")

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path != str(blobs.inputs):
            real_fsync(fd)
            return
        with lock:
            events.append(("dir-start", path))
        time.sleep(0.05)  # a slow disk: renames pile up behind the running pass
        real_fsync(fd)
        with lock:
            events.append(("dir-end", path))

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        with lock:
            events.append(("rename", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    writers = [blobs.input_writer(f"{i:032d}") for i in range(20)]
    for writer in writers:
        await writer.write(b"photo" * 10)

    async def commit(writer: Any) -> None:
        await writer.commit()
        with lock:
            events.append(("answered", str(writer.final)))

    await asyncio.gather(*(commit(w) for w in writers))
    starts = [i for i, (kind, _) in enumerate(events) if kind == "dir-start"]
    ends = [i for i, (kind, _) in enumerate(events) if kind == "dir-end"]
    assert 1 <= len(starts) < 10, f"{len(starts)} directory fsyncs for 20 photos: not shared"
    passes = list(zip(starts, ends, strict=True))
    for writer in writers:
        name = str(writer.final)
        renamed = events.index(("rename", name))
        answered = events.index(("answered", name))
        # Answered only after a directory fsync that began after its rename had ended.
        assert any(renamed < start and end < answered for start, end in passes), (name, events)
        assert writer.final.read_bytes() == b"photo" * 10


async def test_a_task_never_runs_before_its_photo_is_in_place(start_gateway, nodes,  # type: ignore[no-untyped-def]
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The file is published while the record is written. On SQLite the queue hears of the
    # task only once both are durable; on Redis the record is the shared queue's entry (any
    # gateway may claim it at once), so there the file goes first. Either way a slow disk
    # never makes a task fail for want of its photo.
    from photogate.blobs import BlobWriter

    real_publish = BlobWriter.publish

    def slow_publish(self: BlobWriter) -> None:
        if self.final.parent.name == "inputs":
            time.sleep(0.6)  # longer than the shared queue's poll (0.25 s)
        real_publish(self)

    gw = await start_gateway()
    await gw.register(await nodes())
    monkeypatch.setattr(BlobWriter, "publish", slow_publish)
    task_id = await gw.submit()
    final = await gw.wait_done(task_id)
    assert final["status"] == "completed", final
