"""Blob store: task inputs and results as files under the data dir.

Writes go to ``NAME.part`` and are renamed into place only when complete, so a crash
never leaves a half-written file where a reader would take it for a whole one. All file
I/O runs in the default executor: many files are written and fsynced at once, and the
directory fsync that makes their renames durable is shared (:class:`DirectorySync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import IO

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BlobWriter:
    """An incremental writer; :meth:`commit` publishes the file, :meth:`abort` removes it.

    Chunks are gathered up to :attr:`BUFFER` bytes before each trip to the executor, so a
    small photo costs one thread hop (open, write, fsync, rename at once), and a large one
    never holds more than the buffer in memory.
    """

    BUFFER = 256 * 1024

    def __init__(self, final: Path, directory: DirectorySync | None = None, executor: Executor | None = None) -> None:
        self.final = final
        #: Where its file I/O runs (``None``: the loop's default executor).
        self._executor = executor
        self._directory = directory if directory is not None else DirectorySync(final.parent)
        self.partial = final.with_name(final.name + ".part")
        self.size = 0
        #: After :meth:`commit`: the whole content when it fitted in the buffer, else ``None``.
        self.content: bytes | None = None
        self._buf = bytearray()
        self._fh: IO[bytes] | None = None

    def _flush_sync(self) -> None:
        if self._fh is None:
            self._fh = self.partial.open("wb")
        self._fh.write(self._buf)
        self._buf.clear()

    #: Up to this size, a blob still all in memory may be published and checked on the
    #: store's thread, in the same trip as its task's record: checking it is quick.
    SMALL = 64 * 1024

    @property
    def small(self) -> bool:
        """All written so far is still in memory (no file yet), and at most :attr:`SMALL` bytes."""
        return self._fh is None and self.size <= self.SMALL

    @property
    def buffered(self) -> bytes | None:
        """The whole content while it is still only in memory (nothing flushed to a file yet)."""
        return bytes(self._buf) if self._fh is None else None

    async def write(self, chunk: bytes) -> None:
        self._buf += chunk
        self.size += len(chunk)
        if len(self._buf) >= self.BUFFER:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._flush_sync)

    def publish(self) -> None:
        """:meth:`commit` for a caller already on a worker thread: write what is left, fsync
        the file, rename it into place, and have its directory fsynced (a shared pass)."""
        if self._fh is None:
            self.content = bytes(self._buf)
        self._flush_sync()
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.partial, self.final)
        self._directory.sync()

    async def commit(self) -> None:
        """Publish the file durably: its data and its name survive a power cut once this
        returns. The data is written and fsynced on a thread of its own (many files at once);
        the directory's fsync is shared with every rename made before it starts."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.publish)

    def discard(self) -> None:
        """:meth:`abort` for a caller already on a worker thread. Never raises for the file
        it drops: on a full disk, closing flushes what is buffered and fails (ENOSPC) —
        the file is closed all the same, and removed."""
        fh, self._fh = self._fh, None
        self._buf.clear()
        try:
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        finally:
            self.partial.unlink(missing_ok=True)

    async def abort(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.discard)


class DirectorySync:
    """The fsync of one directory, shared by the threads that renamed files into it: each
    pass serves every caller that asked before it started (every rename made before it
    started); one who asks during a pass waits for the next one, which the first such
    caller runs as soon as that pass ends. A rename and its directory fsync cost one trip
    to a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._started = 0  # passes begun
        self._done = 0  # the last pass that succeeded
        self._running = False
        #: How many fsyncs have run (for tests).
        self.passes = 0

    def sync(self) -> None:
        """On a worker thread: return once the directory was fsynced by a pass that began
        after this call did; raise what that pass raised (OSError) if it failed."""
        with self._cond:
            wanted = self._started + 1  # the first pass to begin from now on
            while self._done < wanted:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                number = self._started
                try:
                    self._cond.release()
                    try:
                        self._sync_sync()
                    finally:
                        self._cond.acquire()
                    self._done = number
                finally:
                    # On failure the others waiting for this pass run the next one themselves.
                    self._running = False
                    self._cond.notify_all()

    def _sync_sync(self) -> None:
        """One fsync of the directory."""
        _sync_directory(self.path)  # the rename itself survives a power cut
        self.passes += 1


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Memory:
    """Small blobs kept in memory as well as on disk, up to ``limit`` bytes in all (oldest
    dropped first; one blob at most a sixteenth of it). The file stays the record."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def keep(self, task_id: str, content: bytes | None) -> None:
        if content is None or len(content) > self.limit // 16:
            return
        self.forget(task_id)
        self._blobs[task_id] = content
        self._bytes += len(content)
        while self._bytes > self.limit:
            _, dropped = self._blobs.popitem(last=False)
            self._bytes -= len(dropped)

    def get(self, task_id: str) -> bytes | None:
        return self._blobs.get(task_id)

    def forget(self, task_id: str) -> None:
        content = self._blobs.pop(task_id, None)
        if content is not None:
            self._bytes -= len(content)


class BlobStore:
    #: Small inputs kept in memory until their task ends, so dispatching one costs no file I/O.
    INPUT_MEMORY_BYTES = 32 * 1024 * 1024
    #: Small results kept in memory (the most recent first), so downloading one costs no file I/O.
    RESULT_MEMORY_BYTES = 32 * 1024 * 1024

    #: Threads writing and fsyncing photo files. An fsync waits on the disk, not the CPU, and
    #: with the loop's few default threads concurrent uploads would queue behind each other's.
    IO_THREADS = 32

    def __init__(self, root: Path) -> None:
        self.root = root
        self._io = ThreadPoolExecutor(max_workers=self.IO_THREADS, thread_name_prefix="blob-io")
        self.inputs = root / "inputs"
        self.results = root / "results"
        for folder in (self.inputs, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self._inputs = _Memory(self.INPUT_MEMORY_BYTES)
        self._results = _Memory(self.RESULT_MEMORY_BYTES)
        self._synced = {folder: DirectorySync(folder) for folder in (self.inputs, self.results)}

    def close(self) -> None:
        """Let the file threads end once their work is done (at the gateway's shutdown)."""
        self._io.shutdown(wait=False)

    def keep_input(self, task_id: str, content: bytes | None) -> None:
        """Remember a stored input's bytes for its dispatch."""
        self._inputs.keep(task_id, content)

    def input_in_memory(self, task_id: str) -> bytes | None:
        return self._inputs.get(task_id)

    def forget_input(self, task_id: str) -> None:
        self._inputs.forget(task_id)

    def keep_result(self, task_id: str, content: bytes | None) -> None:
        """Remember a stored (published, checked) result's bytes for its download."""
        self._results.keep(task_id, content)

    def result_in_memory(self, task_id: str) -> bytes | None:
        return self._results.get(task_id)

    @staticmethod
    def _check(task_id: str) -> str:
        # Ids are ours, but this is the last line of defence against path traversal.
        if not _SAFE_ID.match(task_id):
            raise ValueError(f"invalid blob id {task_id!r}")
        return task_id

    def input_path(self, task_id: str) -> Path:
        return self.inputs / self._check(task_id)

    def result_path(self, task_id: str) -> Path:
        return self.results / self._check(task_id)

    def input_writer(self, task_id: str) -> BlobWriter:
        return BlobWriter(self.input_path(task_id), self._synced[self.inputs], self._io)

    def result_writer(self, task_id: str) -> BlobWriter:
        return BlobWriter(self.result_path(task_id), self._synced[self.results], self._io)

    def _delete_sync(self, task_id: str) -> None:
        for path in (self.input_path(task_id), self.result_path(task_id)):
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".part").unlink(missing_ok=True)

    async def delete(self, task_id: str) -> None:
        self._inputs.forget(task_id)
        self._results.forget(task_id)
        await asyncio.get_running_loop().run_in_executor(None, self._delete_sync, task_id)

    def _sweep_partials_sync(self, older_than: float | None) -> int:
        removed = 0
        cutoff = time.time() - older_than if older_than is not None else None
        for folder in (self.inputs, self.results):
            for part in folder.glob("*.part"):
                try:
                    if cutoff is not None and part.stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                part.unlink(missing_ok=True)
                removed += 1
        return removed

    async def sweep_partials(self, older_than: float | None = None) -> int:
        """Remove ``.part`` files a killed process left behind (call before serving).

        On a directory several gateways share, pass ``older_than`` (seconds): a recent
        ``.part`` may be another gateway's upload in progress."""
        return await asyncio.get_running_loop().run_in_executor(None, self._sweep_partials_sync, older_than)
