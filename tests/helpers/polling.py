"""Waiting for a condition: poll it with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import aiohttp

T = TypeVar("T")

#: Seconds between two polls.
INTERVAL = 0.02


@overload
async def wait_until(predicate: Callable[[], Awaitable[T]], timeout: float = ..., what: str = ...,
                     interval: float = ...) -> T: ...


@overload
async def wait_until(predicate: Callable[[], T], timeout: float = ..., what: str = ...,
                     interval: float = ...) -> T: ...


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
                     interval: float = INTERVAL) -> Any:
    """Poll ``predicate`` (sync or async) until it answers something truthy and answer that;
    fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result: Any = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float, what: str,
                     expected: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, KeyError,
                                                                  AssertionError)) -> None:
    """``wait_until`` for a coroutine function that may raise one of ``expected`` while the
    condition is not there yet."""
    async def ok() -> bool:
        try:
            return bool(await check())
        except expected:
            return False

    await wait_until(ok, timeout, what)
