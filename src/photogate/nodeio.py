"""What the gateway reads from a GPU node, capped: a hostile or broken node cannot make
the gateway hold, or store, more than a bound it set before reading.

- an error answer: its first :data:`ERROR_BYTES` bytes, then the connection is closed;
- a health answer: at most :data:`HEALTH_BYTES`;
- a result: at most :func:`result_bound` bytes, judged first by its declared
  ``Content-Length`` and then while it streams (:func:`iter_capped`).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

#: Bytes of a node's error answer that are read (the rest is never received).
ERROR_BYTES = 4096
#: Characters of a node's error message kept for the task's error.
ERROR_CHARS = 300
#: Bytes a node's ``/health`` answer may have.
HEALTH_BYTES = 64 * 1024
#: The most bytes any output pixel may take: 8-bit RGBA, uncompressed.
BYTES_PER_PIXEL = 4
#: Room for the container (PNG filter bytes and chunks, an incompressible WebP or JPEG)
#: on top of the raw pixels, and for metadata the node copies from the input (EXIF, ICC).
CONTAINER_SLACK = 1 / 16
METADATA_SLACK = 1024 * 1024
#: The largest scale a node may be asked for (gpunode's own limit).
MAX_SCALE = 16.0


#: How long a node that answered "busy" is offered no work when it sends no Retry-After,
#: and the least and most its Retry-After can ask for (a job of ours ending on it, or a
#: health report showing a slot free, ends the hold sooner). The least keeps a node that
#: always says "busy, retry now" from pulling the same task back and forth in a tight loop.
BUSY_HOLD = 2.0
MIN_BUSY_HOLD = 0.5
MAX_BUSY_HOLD = 30.0


def busy_hold(retry_after: str | None) -> float:
    """Seconds to hold a busy node, from its ``Retry-After`` (seconds; a date counts as absent)."""
    try:
        seconds = float(retry_after) if retry_after is not None else BUSY_HOLD
    except ValueError:
        seconds = BUSY_HOLD
    if not math.isfinite(seconds):
        seconds = BUSY_HOLD
    return min(max(seconds, MIN_BUSY_HOLD), MAX_BUSY_HOLD)


class AnswerTooLarge(Exception):
    """A node's answer is larger than the gateway reads."""


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether that was all of it. A body cut short
    closes the connection, so the rest is never received."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            return bytes(buf), True
        buf += chunk
    complete = resp.content.at_eof()
    if not complete:
        resp.close()
    return bytes(buf), complete


async def read_json(resp: aiohttp.ClientResponse, limit: int = HEALTH_BYTES) -> Any:
    """The body as JSON, refused (:class:`AnswerTooLarge`) beyond ``limit`` bytes."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        resp.close()
        raise AnswerTooLarge(f"answer of {declared} bytes; at most {limit} are read")
    body, complete = await read_capped(resp, limit)
    if not complete:
        raise AnswerTooLarge(f"answer larger than {limit} bytes")
    return json.loads(body)


async def error_text(resp: aiohttp.ClientResponse) -> str:
    """What a node said about an error, from the first :data:`ERROR_BYTES` of its answer:
    the ``error`` of a JSON body, else its text, at most :data:`ERROR_CHARS` characters."""
    try:
        body, complete = await read_capped(resp, ERROR_BYTES)
    except (aiohttp.ClientError, OSError):
        return resp.reason or ""
    if complete:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and parsed.get("error"):
            return str(parsed["error"])[:ERROR_CHARS]
    try:
        text = body.decode(resp.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = body.decode("utf-8", errors="replace")
    return text[:ERROR_CHARS] or resp.reason or ""


def result_bound(width: int, height: int, input_bytes: int, scale: float | None, ceiling: int) -> int:
    """The most bytes a result for a ``width`` x ``height`` input at ``scale`` can honestly
    take (every output pixel as raw RGBA, plus the container and the input's metadata),
    never above ``ceiling``. An unknown scale counts as the largest a node may be asked for."""
    scale = MAX_SCALE if scale is None else min(max(scale, 1.0), MAX_SCALE)
    pixels = math.ceil(width * scale) * math.ceil(height * scale)
    raw = pixels * BYTES_PER_PIXEL
    return min(raw + int(raw * CONTAINER_SLACK) + input_bytes + METADATA_SLACK, ceiling)


async def iter_capped(resp: aiohttp.ClientResponse, bound: int, chunk_size: int) -> AsyncGenerator[bytes, None]:
    """The body in chunks, refused (:class:`AnswerTooLarge`) as soon as it is known to
    exceed ``bound``: by its ``Content-Length`` before any is read, else before the chunk
    that crosses it is handed on."""
    declared = resp.content_length
    if declared is not None and declared > bound:
        resp.close()
        raise AnswerTooLarge(f"result too large: the node declared {declared} bytes, at most {bound} expected")
    received = 0
    async for chunk in resp.content.iter_chunked(chunk_size):
        received += len(chunk)
        if received > bound:
            resp.close()
            raise AnswerTooLarge(f"result too large: more than {bound} bytes (the most expected)")
        yield chunk
