"""HTTP handlers: ``POST /v1/enhance``, ``GET /health``, ``GET /info``."""

from __future__ import annotations

import hmac
import math
import platform

import numpy as np
import onnxruntime as ort
import PIL
from aiohttp import web
from aiohttp.typedefs import Handler

from . import __version__
from .errors import BadImage, NodeError, QueueFull, Unauthorized
from .inference import EnhanceRequest
from .jsonbody import json_response
from .keys import CONFIG, ENGINE, REGISTRAR


def _expected_token(request: web.Request) -> str | None:
    registrar = request.app.get(REGISTRAR)
    if registrar is not None:
        return registrar.token
    return request.app[CONFIG].token or None


def _check_auth(request: web.Request) -> None:
    expected = _expected_token(request)
    if expected is None:
        raise Unauthorized("node not registered with a gateway yet: it accepts no inference")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong node token: send 'Authorization: Bearer <node_token>'")


def _parse_request(request: web.Request) -> EnhanceRequest:
    q = request.query
    try:
        scale = float(q["scale"]) if q.get("scale") else None
    except ValueError:
        raise BadImage(f"scale must be a number, got {q['scale']!r}") from None
    if scale is not None and not math.isfinite(scale):
        raise BadImage("scale must be a finite number")
    try:
        quality = int(q.get("quality", "95"))
    except ValueError:
        raise BadImage(f"quality must be an integer 1..100, got {q['quality']!r}") from None
    return EnhanceRequest(scale=scale, format=q.get("format") or None, quality=quality)


async def enhance(request: web.Request) -> web.Response:
    _check_auth(request)
    req = _parse_request(request)
    engine = request.app[ENGINE]
    if engine.busy + engine.queued >= engine.slots + engine.queue_size:
        # Say so before the upload is read: the gateway can send it elsewhere at once.
        raise QueueFull(f"node busy: {engine.busy} running, {engine.queued} queued; try another node")
    data = await request.read()
    result = await engine.enhance(data, req)
    return web.Response(
        body=result.body,
        content_type=result.content_type,
        headers={
            "X-Inference-Ms": f"{result.inference_ms:.1f}",
            "X-Total-Ms": f"{result.total_ms:.1f}",
            "X-Output-Width": str(result.width),
            "X-Output-Height": str(result.height),
        },
    )


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    info = engine.model.info
    registrar = request.app.get(REGISTRAR)
    # A simulated node also says the most jobs it held at once and how many it ran.
    return json_response({
        **engine.health_extra(),
        "status": "ok",
        "busy": engine.busy,
        "queued": engine.queued,
        "slots": engine.slots,
        # Jobs it holds waiting besides those it runs: how far a gateway may pipeline.
        "queue_size": engine.queue_size,
        "model": info.name,
        "scale": info.scale,
        "provider": info.provider,
        "device": info.device,
        "throughput": engine.throughput(),
        # Registered means "the gateway has given us an id and a token": never true standalone,
        # where --token is a local credential, not a registration.
        "mode": "gateway" if registrar else "standalone",
        "server_id": registrar.server_id if registrar else None,
        "registered": registrar is not None and registrar.token is not None,
    })


async def info(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    config = request.app[CONFIG]
    m = engine.model.info
    return json_response({
        "name": "gpunode",
        "version": __version__,
        "model": {
            "name": m.name,
            "file": m.path.rsplit("/", 1)[-1],
            "sha256": m.sha256,
            "scale": m.scale,
            "fixed_input_size": list(m.fixed_size) if m.fixed_size else None,
            "input_multiple": m.multiple,
            "contract": "float32 NCHW RGB [0,1] in, same at scale x out",
        },
        "provider": m.provider,
        "providers": engine.model.session.get_providers(),
        "device": m.device,
        "slots": engine.slots,
        "tile_size": engine.tile_size,
        "tile_overlap": config.tile_overlap,
        "queue_size": config.queue_size,
        "formats": ["jpeg", "png", "webp"],
        "versions": {
            "gpunode": __version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "python": platform.python_version(),
        },
    })


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NodeError as exc:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return json_response({"error": exc.message}, status=exc.status, headers=headers)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_response({"error": f"image too large: {exc.text}"}, status=413)
