"""The node client: sends one job to a GPU node and receives its answer into the blob store.

The stored input streams to the node's ``POST /v1/enhance``; the answer streams into the
blob store, reading no more than :mod:`photogate.nodeio` allows. How a node fails decides
what the dispatcher does next, so each kind is its own exception:

- :class:`NodeFailure`: the node could not do the job (connection error, timeout, 5xx, a
  result over its bound, a refused credential); another node may;
- :class:`NodeBusy`: the node has no free slot (503, 429): not a failure;
- :class:`JobRejected`: the node refused the job itself (4xx); no node will do better;
- :class:`StorageFailure`: the gateway's own storage failed (a full disk, a missing input).

``nodeio`` stays the lower layer (capped reads): the health monitor reads nodes through it
too, and must not depend on the dispatch package.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import aiohttp

from ..blobs import BlobStore, BlobWriter
from ..config import DispatchConfig
from ..imagecheck import MIME
from ..models import TaskRecord
from ..nodeio import AnswerTooLarge, busy_hold, error_text, iter_capped, result_bound
from ..registry import NodeState
from ..resultcheck import ResultSpec

T = TypeVar("T")

#: Chunk size of the result stream.
RESULT_CHUNK = 256 * 1024
INPUT_MISSING = "the uploaded photo is no longer stored on the gateway (its file was removed); upload it again"


class NodeFailure(Exception):
    """The node could not do the job; another node may. ``counts``: a health failure."""

    def __init__(self, message: str, *, counts: bool = True) -> None:
        super().__init__(message)
        self.counts = counts


class NodeBusy(NodeFailure):
    """The node has no free slot (503, 429): not a failure; the job waits for a free slot,
    and the node is held for up to ``hold`` seconds (its Retry-After)."""

    def __init__(self, message: str, hold: float) -> None:
        super().__init__(message, counts=False)
        self.hold = hold


class JobRejected(Exception):
    """The node refused the job itself (4xx): no other node will do better."""


class StorageFailure(Exception):
    """The gateway's own storage failed the job (a full disk, a missing input): no node is to blame."""


def not_stored(exc: OSError) -> StorageFailure:
    return StorageFailure(f"the gateway could not store the result ({exc.strerror or exc}); try again later")


async def stored(write: Awaitable[T]) -> T:
    """Await a blob write; a failed one is the gateway's :class:`StorageFailure`."""
    try:
        return await write
    except OSError as exc:
        raise not_stored(exc) from exc


async def failure_of(resp: aiohttp.ClientResponse) -> Exception:
    """The failure a node's non-200 answer stands for, with what the node said."""
    detail = await error_text(resp)
    if resp.status in (401, 403):
        return NodeFailure(f"node refused the gateway's credential (HTTP {resp.status}): {detail}")
    if resp.status in (429, 503):
        return NodeBusy(f"node busy (HTTP {resp.status}): {detail}", busy_hold(resp.headers.get("Retry-After")))
    if 400 <= resp.status < 500:
        return JobRejected(f"the GPU server could not process this image: {detail}")
    return NodeFailure(f"node error HTTP {resp.status}: {detail}")


class NodeClient:
    """Sends jobs to nodes over the gateway's one HTTP session."""

    def __init__(self, session: aiohttp.ClientSession, blobs: BlobStore, config: DispatchConfig, *,
                 max_result_bytes: int) -> None:
        self.session = session
        self.blobs = blobs
        self.config = config
        self.max_result_bytes = max_result_bytes

    def result_spec(self, task: TaskRecord, state: NodeState, max_pixels: int) -> ResultSpec:
        """What ``state``'s node must answer for ``task``: the format asked for, the input's
        size at the node's scale, at most ``max_pixels`` and the bound on its bytes."""
        scale = expected_scale(task, state)
        fmt = task.params.get("format")
        return ResultSpec(task.width, task.height, scale, fmt if isinstance(fmt, str) else None, max_pixels,
                          result_bound(task.width, task.height, task.input_bytes, scale, self.max_result_bytes))

    async def send(self, task: TaskRecord, state: NodeState,
                   node_done: Callable[[bool], Awaitable[None]] | None = None) -> BlobWriter:
        """Send the photo to the node and receive its answer; ``node_done(True)`` as soon as
        the answer is fully received. A large result is published here; a small one is left
        in memory, to be published with the task's record."""
        params = {k: str(v) for k, v in task.params.items() if k in ("scale", "format", "quality") and v is not None}
        headers = {
            "Content-Type": task.input_mime,
            "Authorization": f"Bearer {state.record.node_token}",
        }
        timeout = aiohttp.ClientTimeout(total=self.config.timeout, sock_connect=self.config.connect_timeout)
        url = state.record.base_url + "/v1/enhance"
        kept = self.blobs.input_in_memory(task.task_id)
        try:
            fh = None if kept is not None else await _open_for_read(self.blobs.input_path(task.task_id))
        except FileNotFoundError:
            raise StorageFailure(INPUT_MISSING) from None
        bound = result_bound(task.width, task.height, task.input_bytes, expected_scale(task, state),
                             self.max_result_bytes)
        writer = self.blobs.result_writer(task.task_id)
        try:
            async with self.session.post(
                url, data=kept if fh is None else fh, params=params, headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as resp:
                await _receive(resp, writer, bound)
            if node_done is not None:
                await node_done(True)
            if not writer.small:
                await stored(writer.commit())
        except AnswerTooLarge as exc:
            await writer.abort()
            raise NodeFailure(str(exc)) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            await writer.abort()
            name = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise NodeFailure(f"cannot reach {state.record.address}: {name}") from exc
        except BaseException:
            await writer.abort()
            raise
        finally:
            if fh is not None:
                fh.close()  # a read-only local file: closing it does not block
        return writer


async def _receive(resp: aiohttp.ClientResponse, writer: BlobWriter, bound: int) -> None:
    """The node's answer into ``writer``: an image of at most ``bound`` bytes, or the failure it stands for."""
    if resp.status != 200:
        raise await failure_of(resp)
    mime = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if mime not in MIME.values():
        raise NodeFailure(f"node answered {mime or 'no content type'}, not an image")
    async with contextlib.aclosing(iter_capped(resp, bound, RESULT_CHUNK)) as chunks:
        async for chunk in chunks:
            await stored(writer.write(chunk))


async def _open_for_read(path: Path) -> BinaryIO:
    """Open ``path`` in the executor; if the caller is cancelled meanwhile, close it when it opens."""
    opening = asyncio.get_running_loop().run_in_executor(None, path.open, "rb")
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_when_open)
        raise


def _close_when_open(opening: asyncio.Future[io.BufferedReader]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def expected_scale(task: TaskRecord, state: NodeState) -> float | None:
    """The scale the result is made at: the one asked for, else the one the node reports."""
    for value in (task.params.get("scale"), state.health.get("scale"), state.record.info.get("scale")):
        if value is None or isinstance(value, bool):
            continue
        try:
            scale = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(scale) and scale > 0:
            return scale
    return None
