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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import PayloadTooLarge
from .imagecheck import Header, ImageInfo, Source, read_header, verify
from .resultcheck import COST, DECODED, ResultSpec, check_size, check_structure

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

    #: Reserved for the trip that reads the header: a check that costs no more (a PNG, a
    #: baseline JPEG up to about 90 MP, a WebP up to 0.3 MP) is finished in that same trip.
    FIRST_TRIP = 8 * 1024 * 1024

    def __init__(self, budget_bytes: int, threads: int = 2) -> None:
        self.budget = MemoryBudget(budget_bytes)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="photogate-imagecheck")

    async def check(self, source: Source, max_pixels: int, max_side: int | None = None) -> ImageInfo:
        """The image's format and size once its check has passed; raises the 415/413/400
        errors of :mod:`photogate.imagecheck`."""
        room = min(self.FIRST_TRIP, self.budget.capacity)
        header, verified = await self._reserved(room, _header_then_verify, source, max_pixels, max_side, room)
        if verified:
            return header.info
        if header.cost > self.budget.capacity:
            if header.structural:
                return header.info  # its structure is checked; a full decode would not fit
            raise PayloadTooLarge(
                f"checking this {header.info.format} image ({header.info.width}x{header.info.height}) needs "
                f"{header.cost / 2**20:.0f} MiB, more than the gateway's image-check budget of "
                f"{self.budget.capacity / 2**20:.0f} MiB: send a smaller or baseline (non-progressive) image"
            )
        await self._reserved(header.cost, verify, source, header)
        return header.info

    async def check_result(self, source: Source, spec: ResultSpec) -> ImageInfo:
        """A node's result, checked by its container (:mod:`photogate.resultcheck`) on a
        checker thread; then a WebP, or a format without a container check (BMP), is decoded
        like an upload, under the budget."""
        info = await self._reserved(min(COST, self.budget.capacity), check_structure, source, spec)
        if info is not None and info.format not in DECODED:
            return info
        decoded = await self.check(source, spec.max_pixels)
        check_size(decoded, spec)
        return decoded

    async def _reserved(self, cost: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a checker thread with ``cost`` bytes reserved from the budget."""
        await self.budget.acquire(cost)
        job = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        # The bytes stay reserved until the thread itself is done, even if our caller is
        # cancelled meanwhile: only then is its memory free.
        job.add_done_callback(lambda _: self.budget.release(cost))
        return await asyncio.shield(job)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _header_then_verify(source: Source, max_pixels: int, max_side: int | None, room: int) -> tuple[Header, bool]:
    """Read the header, and finish the check at once if it costs no more than ``room``."""
    header = read_header(source, max_pixels, max_side)
    if header.cost > room:
        return header, False
    verify(source, header)
    return header, True
