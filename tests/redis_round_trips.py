"""Counting what a gateway asks of Redis (issue 17): every round trip the client makes, by the
store method that made it and the gateway code that called that method.

A round trip is one ``send_packed_command`` of redis-py's asyncio connection: one command,
one pipeline (``MULTI``/``EXEC`` or not) or one script call (``EVALSHA``; a script Redis does
not know yet costs one more, once). Time-driven work (the shared registry's refresh and
heartbeat, the health prober, a ``?wait=`` poll of the store) is labelled as such, so a
count per task leaves it out however slow the machine is.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

#: Callers whose round trips come with time, not with tasks (and a new pooled connection's
#: handshake: once per connection, not per task).
TIMED = ("RedisRegistry.run", "HealthMonitor", "RuntimeSettings.watch", "Dispatcher.wait_finished", "connect")
_STORE = "/photogate/storage/redis/"


def _qualname(frame: FrameType) -> str:
    return str(getattr(frame.f_code, "co_qualname", frame.f_code.co_name))


def label(frame: FrameType | None) -> str:
    """``caller > store method`` for the round trip being made in ``frame``'s stack."""
    method, caller, timed = "?", "?", ""
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        name = _qualname(frame)
        if "/photogate/" in path:
            if _STORE in path:
                if name != "unavailable.<locals>.call":
                    method = name
            elif caller == "?":
                caller = name
            if not timed:
                timed = next((t for t in TIMED if name.startswith(t)), "")
        elif name == "AbstractConnection.connect" and not timed:
            timed = "connect"
        frame = frame.f_back
    return f"{timed + ': ' if timed else ''}{caller} > {method}"


class RoundTrips:
    def __init__(self) -> None:
        self.by_label: Counter[str] = Counter()

    def per_task(self) -> int:
        """Round trips that came with the tasks (timed work left out)."""
        return sum(n for key, n in self.by_label.items() if not key.startswith(TIMED))

    def timed(self) -> int:
        return sum(n for key, n in self.by_label.items() if key.startswith(TIMED))

    def table(self, tasks: int) -> str:
        rows = [f"{n / tasks:6.2f}  {key}" for key, n in sorted(self.by_label.items(), key=lambda kv: -kv[1])]
        return "\n".join(rows)


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    """Count every round trip made by any redis-py asyncio connection in this process."""
    trips = RoundTrips()
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        trips.by_label[label(sys._getframe(1))] += 1
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    try:
        yield trips
    finally:
        monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
