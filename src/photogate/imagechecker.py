"""Every image check the gateway runs, uploads and node results alike, under one memory budget.

A decode bomb is a small file whose check needs a lot of memory (a 423 KB progressive JPEG
at 36 megapixels holds 212 MiB of coefficients). The header says what a check will cost
(:func:`photogate.imagecheck.read_header`), so each check reserves that many bytes from a
gateway-wide :class:`MemoryBudget` before it decodes anything, on a small thread pool of its
own (never the store's thread): however many bombs arrive at once, the checks in flight
hold at most ``limits.check_memory_bytes``, and the others wait their turn in arrival order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import PayloadTooLarge
from .imagecheck import Header, ImageInfo, Source, read_header, verify

T = TypeVar("T")


class MemoryBudget:
    """An async semaphore counted in bytes, first come first served (a large reservation
    is never overtaken by a stream of small ones)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def held(self) -> int:
        return self.capacity - self.free

    async def acquire(self, cost: int) -> None:
        if cost > self.capacity:
            raise ValueError(f"{cost} bytes exceed the whole budget of {self.capacity}")
        if not self._waiters and cost <= self.free:
            self.free -= cost
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (cost, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(cost)  # granted just as it was cancelled
            else:
                self._waiters.remove(entry)
                self._grant()  # it may have been the head that held the others back
            raise

    def release(self, cost: int) -> None:
        self.free += cost
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            cost, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.free -= cost
            waiter.set_result(None)


class ImageChecker:
    """Checks images in its own threads, each check's memory reserved from one budget."""

    def __init__(self, budget_bytes: int, threads: int = 2) -> None:
        self.budget = MemoryBudget(budget_bytes)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="photogate-imagecheck")

    async def check(self, source: Source, max_pixels: int, max_side: int | None = None) -> ImageInfo:
        """The image's format and size once its check has passed; raises the 415/413/400
        errors of :mod:`photogate.imagecheck`."""
        header = await self._run(read_header, source, max_pixels, max_side)
        if header.cost > self.budget.capacity:
            if header.structural:
                return header.info  # its structure is checked; a full decode would not fit
            raise PayloadTooLarge(
                f"checking this {header.info.format} image ({header.info.width}x{header.info.height}) needs "
                f"{header.cost / 2**20:.0f} MiB, more than the gateway's image-check budget of "
                f"{self.budget.capacity / 2**20:.0f} MiB: send a smaller or baseline (non-progressive) image"
            )
        await self._decode(source, header)
        return header.info

    async def _decode(self, source: Source, header: Header) -> None:
        await self.budget.acquire(header.cost)
        job = asyncio.get_running_loop().run_in_executor(self._pool, verify, source, header)
        # The bytes stay reserved until the thread itself is done, even if our caller is
        # cancelled meanwhile: only then is its memory free.
        job.add_done_callback(lambda _: self.budget.release(header.cost))
        await asyncio.shield(job)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
