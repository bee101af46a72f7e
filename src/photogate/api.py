"""The public API, compatible with the earlier gateway: enhance, status, download, health, info, config."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import BodyPartReader, hdrs, web

from . import __version__
from .access import AccessPolicy, access_policy
from .blobs import BlobWriter
from .bodies import BodyReads, FormBudget
from .errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    StorageFull,
    storage_full,
)
from .estimates import Estimate, finished
from .fields import parse_int, parse_number
from .imagecheck import EXTENSION, ImageInfo
from .jsonbody import encode, json_response
from .keys import GATEWAY
from .models import TaskRecord, TaskStatus
from .netutil import client_ip
from .taskview import TASK_ID, status_body

if TYPE_CHECKING:
    from .gateway import Gateway

log = structlog.get_logger("photogate.api")
routes = web.RouteTableDef()

UNAVAILABLE = "服务暂时不可用，请稍后重试"
FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "webp": "webp"}
QUALITY_LEVELS = {"low": 75, "medium": 85, "high": 95}
#: Multipart overhead allowed on top of limits.max_upload_bytes before the early 413.
MULTIPART_SLACK = 64 * 1024


def why_unavailable(gw: Gateway) -> str | None:
    """Why no node can take work (``None`` when one can), in the words of both the uploads'
    503 and ``/api/v1/health``: none registered, all draining, or none healthy."""
    if gw.registry.serving(gw.multi_backend):
        return None
    nodes = gw.registry.all()
    draining = [s.server_id for s in nodes if s.record.draining]
    if not nodes:
        return "no GPU server is registered: uploads are refused until one registers"
    if len(draining) == len(nodes):
        return (f"every GPU server is draining ({', '.join(draining[:5])}): uploads are refused until "
                "an operator undrains one (photogate-admin undrain SERVER_ID)")
    unhealthy = len(nodes) - len(draining)
    if draining:
        return (f"no GPU server can take work: {unhealthy} unhealthy, {len(draining)} draining; "
                "uploads are refused until one is healthy again or undrained")
    return (f"no healthy GPU server: all {unhealthy} registered fail their health checks; "
            "uploads are refused until one is up")


def _no_capacity(reason: str, retry_after: int) -> ServiceUnavailable:
    return ServiceUnavailable(f"{UNAVAILABLE} ({reason})", headers={"Retry-After": str(retry_after)})


def _no_storage(retry_after: int) -> StorageFull:
    return StorageFull("the gateway's storage is full: no photo can be accepted now; try again later",
                       retry_after=retry_after)


def _parse_params(fields: dict[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if fields.get("scale"):
        params["scale"] = parse_number(fields["scale"], "scale", 1, 8, " such as 2 or 4")
    if fields.get("format"):
        fmt = FORMATS.get(fields["format"].lower())
        if fmt is None:
            raise BadRequest("format: must be jpeg, png or webp")
        params["format"] = fmt
    quality = fields.get("quality") or ""
    level = (fields.get("quality_level") or "").lower()
    if quality:
        params["quality"] = parse_int(quality, "quality", 1, 100)
    elif level in QUALITY_LEVELS:
        params["quality"] = QUALITY_LEVELS[level]
    # Old clients send these; kept with the task for the record.
    for legacy in ("tile_size", "quality_level"):
        if fields.get(legacy):
            params[legacy] = fields[legacy][:32]
    return params


def _wait_query(request: web.Request) -> tuple[float | None, bool]:
    """``?wait=SECONDS`` (clamped to 0..300) and whether ``?result=inline`` asks for the image itself."""
    wait = request.query.get("wait")
    # Out of range is clamped (an old client's wait=-1 or wait=3600), never an error.
    seconds = min(max(parse_number(wait, "wait", -1e18, 1e18), 0.0), 300.0) if wait else None
    inline = request.query.get("result", "url")
    if inline not in ("url", "inline"):
        raise BadRequest("result: must be url (the default: the status names result_url) or inline")
    if inline == "inline" and seconds is None:
        raise BadRequest("result=inline: also send wait=SECONDS (how long to wait for the image)")
    return seconds, inline == "inline"


async def _read_upload(request: web.Request, writer: BlobWriter, limit: int) -> dict[str, str]:
    """Stream the multipart body's ``file`` into ``writer`` (at most ``limit`` bytes) and
    return the other fields, every byte of them read and counted."""
    fields: dict[str, str] = {}
    got_file = False
    read = BodyReads.of(request, again="send the photo again")
    budget = FormBudget(read)  # every other field's bytes, and how many there are
    try:
        reader = await request.multipart()
    except ValueError as exc:  # no boundary, or one too long
        raise BadRequest(f"malformed multipart/form-data: {exc}") from None
    while (part := await read(reader.next())) is not None:
        budget.count_part()
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if part.name == "file":
            if got_file:
                raise BadRequest("send one photo per request (more than one 'file' field)")
            got_file = True
            while chunk := await read(part.read_chunk(256 * 1024)):
                if writer.size + len(chunk) > limit:
                    raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
                await writer.write(chunk)
        else:  # unnamed parts too: read and counted, never skipped unread
            value = await budget.field(part, part.name or "")
            if part.name:
                fields[part.name] = value
    if not got_file:
        raise BadRequest("missing multipart field 'file' with the photo")
    return fields


@routes.post("/api/v1/enhance")
async def enhance(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    cfg = gw.config
    access = access_policy(request.app)
    # Stand-in until the API-key part of issue 18 lands (its admit names the open API's owner):
    # the open API's owner is the client address, after the trusted proxies.
    owner = await access.admit(request)
    if owner is None and not access.charges:  # an anonymous upload is never charged to an address
        owner = f"ip:{client_ip(request, cfg.server.trusted_proxies)}"
    limit = cfg.limits.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        raise PayloadTooLarge(f"upload is {request.content_length} bytes; the limit is {limit} bytes")
    if (reason := why_unavailable(gw)) is not None:
        raise _no_capacity(reason, cfg.limits.retry_after)
    gw.dispatcher.check_capacity()
    # The raw header, not request.content_type: aiohttp parses that with the email package
    # (about 0.5 ms, and every upload's boundary misses its cache); the multipart reader
    # checks the boundary itself.
    if not request.headers.get(hdrs.CONTENT_TYPE, "").lstrip().lower().startswith("multipart/"):
        raise BadRequest("send the photo as multipart/form-data with the field 'file'")
    seconds, inline = _wait_query(request)

    task_id = secrets.token_hex(16)
    writer = gw.blobs.input_writer(task_id)
    try:
        params = _parse_params(await _read_upload(request, writer, limit))
    except BaseException as exc:
        await writer.abort()
        if storage_full(exc):
            raise _no_storage(cfg.limits.retry_after) from None
        raise

    task = await _accept(gw, access, owner, task_id, writer, params)
    gw.metrics.task_accepted()
    log.info("task_accepted", task_id=task_id, bytes=writer.size, width=task.width, height=task.height)
    body = {"task_id": task_id, "status": task.status.value, "message": "任务已提交，正在排队处理"}

    if seconds is not None:
        await gw.dispatcher.wait_finished(task_id, seconds)
        current = await gw.store.get_task(task_id)
        if current is not None:
            if inline and current.status is TaskStatus.COMPLETED:
                # The image itself: one request from photo to result (the task stays downloadable).
                return await _result_response(request, current, {"X-Task-ID": task_id, "X-Task-Status": "completed"})
            body = status_body(current, gw.dispatcher.estimator.estimate(current))
    return json_response(body)


def _new_task(task_id: str, writer: BlobWriter, info: ImageInfo, params: dict[str, Any],
              owner: str | None) -> TaskRecord:
    now = time.time()
    return TaskRecord(
        task_id=task_id, status=TaskStatus.QUEUED, created_at=now, updated_at=now, input_mime=info.mime,
        input_bytes=writer.size, width=info.width, height=info.height, params=params, owner=owner,
    )


async def _accept(gw: Gateway, access: AccessPolicy, owner: str | None, task_id: str, writer: BlobWriter,
                  params: dict[str, Any]) -> TaskRecord:
    """Publish and check the upload's file, charge for it, record the task and queue it;
    on any failure nothing of it is kept (and a charge is refunded).

    It runs to its end even when the handler is cancelled (the server stopping): its trips
    to threads go on regardless, and stopping halfway could leave a file without its record
    or a record without its file. What it accepted then waits in the store for the restart."""
    accepting = asyncio.ensure_future(_store_upload(gw, access, owner, task_id, writer, params))
    try:
        return await asyncio.shield(accepting)
    except asyncio.CancelledError:
        await asyncio.wait([accepting])
        if not accepting.cancelled():
            accepting.exception()  # its own failure is its own to clean up; nobody hears of it
        raise


async def _store_upload(gw: Gateway, access: AccessPolicy, owner: str | None, task_id: str, writer: BlobWriter,
                        params: dict[str, Any]) -> TaskRecord:
    limits = gw.config.limits
    charged = False
    try:
        # Checked on the image checker's threads under its memory budget (never on the
        # store's thread): from memory when the photo is still all there, else from its file.
        source: Path | bytes | None = writer.buffered
        if source is None:
            await writer.commit()
            source = writer.final
        info = await gw.images.check(source, limits.max_pixels, limits.max_side)
        if writer.small and not access.charges:
            # Nothing to charge between the check and the record: published and recorded
            # in one trip to the store's thread.
            def publish_and_record() -> TaskRecord:
                writer.publish()
                return _new_task(task_id, writer, info, params, owner)

            task = await gw.store.insert_task(publish_and_record)
        else:
            if isinstance(source, bytes):
                await writer.commit()
            await access.charge(owner, task_id)
            charged = True
            task = await gw.store.insert_task(_new_task(task_id, writer, info, params, owner))
    except BaseException as exc:
        await writer.abort()
        await gw.blobs.delete(task_id)
        if charged:
            await access.refund(owner, task_id)
        if storage_full(exc):
            raise _no_storage(limits.retry_after) from None
        raise
    gw.blobs.keep_input(task_id, writer.content)
    gw.dispatcher.accept(task)
    return task


#: Results up to this size are read in one go rather than streamed from the file.
SMALL_RESULT = 512 * 1024


async def _task_or_404(request: web.Request, *, peek: bool = False) -> TaskRecord:
    """The task the path names, if this client may see it. ``peek``: the store's cached
    record itself when there is one, to be read at once and never kept or changed."""
    access = access_policy(request.app)
    owner = await access.admit(request)
    task_id = request.match_info["task_id"]
    task = None
    if TASK_ID.match(task_id):
        store = request.app[GATEWAY].store
        task = (store.peek_task(task_id) if peek else None) or await store.get_task(task_id)
    if task is None or not access.can_view(owner, task):
        raise NotFound("unknown task id (tasks expire after a while)")
    return task


class StatusBodies:
    """Encoded status answers of recently polled tasks, each valid while its task's
    ``(status, updated_at)`` is unchanged (every change of a task moves ``updated_at``).
    A finished task's answer is kept whole; an unfinished one's without its estimate (which
    moves with the clock), encoded anew on each request and joined to the rest."""

    LIMIT = 8192

    def __init__(self) -> None:
        self._bodies: dict[str, tuple[TaskStatus, float, bytes]] = {}

    def get(self, task: TaskRecord, estimate: Callable[[TaskRecord], Estimate]) -> bytes:
        hit = self._bodies.get(task.task_id)
        if hit is not None and hit[0] is task.status and hit[1] == task.updated_at:
            body = hit[2]
        else:
            done = finished(task)
            body = encode(status_body(task, done))
            if done is None:
                body = body[:-1]  # without its closing brace: the estimate follows
            if len(self._bodies) >= self.LIMIT:
                self._bodies.clear()
            self._bodies[task.task_id] = (task.status, task.updated_at, body)
        if finished(task) is not None:
            return body
        return body + b", " + encode(estimate(task).fields())[1:]


STATUS_BODIES = web.AppKey("status_bodies", StatusBodies)
JSON_TYPE = {hdrs.CONTENT_TYPE: "application/json; charset=utf-8"}


@routes.get("/api/v1/status/{task_id}")
async def status(request: web.Request) -> web.Response:
    # The busiest request a gateway gets: answered from the cache, no copy, no thread hop,
    # and the same answer is encoded once while the task does not change.
    task = await _task_or_404(request, peek=True)
    estimator = request.app[GATEWAY].dispatcher.estimator
    return web.Response(body=request.app[STATUS_BODIES].get(task, estimator.estimate), headers=JSON_TYPE)


@routes.get("/api/v1/download/{task_id}")
async def download(request: web.Request) -> web.StreamResponse:
    task = await _task_or_404(request)
    if task.status is TaskStatus.FAILED:
        raise Conflict(f"the task failed, there is nothing to download: {task.error}")
    if task.status is not TaskStatus.COMPLETED or not task.result_mime:
        raise Conflict(f"the result is not ready yet (status: {task.status.value}); poll /api/v1/status/{task.task_id}")
    return await _result_response(request, task)


async def _result_response(request: web.Request, task: TaskRecord,
                           extra: dict[str, str] | None = None) -> web.StreamResponse:
    """The completed task's result, as ``GET /download`` sends it."""
    assert task.result_mime is not None
    path = request.app[GATEWAY].blobs.result_path(task.task_id)
    filename = f"enhanced_{task.task_id}.{EXTENSION.get(task.result_mime, 'bin')}"
    headers = {
        "Content-Type": task.result_mime,
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",  # an image, never a page, whatever its bytes hold
        **(extra or {}),
    }
    kept = request.app[GATEWAY].blobs.result_in_memory(task.task_id)
    if kept is not None:
        return web.Response(body=kept, headers=headers)
    if task.result_bytes is not None and task.result_bytes <= SMALL_RESULT:
        # One read in the executor beats FileResponse's stat, open and sendfile for a small file.
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        except FileNotFoundError:
            raise NotFound("the result is no longer stored (tasks expire after a while)") from None
        return web.Response(body=body, headers=headers)
    return web.FileResponse(path, headers=headers)


def fleet_summary(request: web.Request) -> dict[str, Any]:
    gw = request.app[GATEWAY]
    return {
        **gw.registry.summary(),
        "strategy": gw.strategy_name,
        "multi_backend": gw.multi_backend,
        "queued": gw.dispatcher.queued,
        "in_flight": gw.dispatcher.in_flight,
        "health_check_running": gw.monitor.running,
    }


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    fleet = fleet_summary(request)
    reason = why_unavailable(gw)
    return json_response({
        "status": "healthy" if reason is None else "degraded",
        "message": reason or "ok",
        "service": "photogate",
        "version": __version__,
        "uptime": round(time.time() - gw.started_at, 1),
        "timestamp": time.time(),
        "fleet": fleet,
        "tasks": await gw.store.count_tasks(),
    })


@routes.get("/api/v1/info")
async def info(request: web.Request) -> web.Response:
    return json_response({
        "name": "photogate",
        "description": "Gateway in front of a fleet of GPU photo-enhancement servers",
        "version": __version__,
        "strategy": request.app[GATEWAY].strategy_name,
        "fleet": fleet_summary(request),
        "endpoints": sorted({f"{r.method} {r.resource.canonical}" for r in request.app.router.routes()
                             if r.method not in ("HEAD", "OPTIONS") and r.resource is not None}),
        # The original gateway's shape: a dict, name -> path.
        "endpoint_map": ORIGINAL_ENDPOINTS,
    })


#: ``/api/v1/info``'s ``endpoint_map``: the original gateway's endpoints by name.
ORIGINAL_ENDPOINTS = {
    "enhance": "/api/v1/enhance",
    "status": "/api/v1/status/{task_id}",
    "download": "/api/v1/download/{task_id}",
    "health": "/api/v1/health",
    "info": "/api/v1/info",
    "config": "/api/v1/config",
    "multi_backend": "/api/v1/config/multi-backend",
    "webhook_register": "/webhook/register",
    "webhook_unregister": "/webhook/unregister",
    "webhook_servers": "/webhook/servers",
}

