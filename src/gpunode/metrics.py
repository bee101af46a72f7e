"""The node's ``GET /metrics`` (Prometheus text format, prometheus-client).

A registry per app, never the process-global one. Per photo: inference and request
seconds, tiles and megapixels, read from what ``POST /v1/enhance`` answered (its timing
headers), so the views stay as they are. At scrape time: busy, queued, slots, speed,
the execution provider and, on CUDA hosts with NVML (``pynvml``), GPU memory in use.
Nothing here is secret, like ``/health``: no credential needed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from . import __version__, tiling
from .engines import EnhanceEngine
from .keys import ENGINE

SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class NodeMetrics:
    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gpunode_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.inference = Histogram("gpunode_inference_seconds", "Seconds of model inference per photo",
                                   buckets=SECONDS_BUCKETS, registry=r)
        self.total = Histogram("gpunode_request_seconds", "Seconds per photo: decode, queue, inference, encode",
                               buckets=SECONDS_BUCKETS, registry=r)
        self.tiles = Counter("gpunode_tiles", "Tiles run through the model", registry=r)
        self.megapixels = Counter("gpunode_megapixels", "Input megapixels enhanced", registry=r)
        r.register(_Live(app))

    def observe(self, request: web.Request, response: web.StreamResponse, body: bytes) -> None:
        """One answered ``POST /v1/enhance``."""
        headers = response.headers
        try:
            self.inference.observe(float(headers["X-Inference-Ms"]) / 1000)
            self.total.observe(float(headers["X-Total-Ms"]) / 1000)
        except (KeyError, ValueError):
            return
        try:
            with Image.open(io.BytesIO(body)) as im:  # the header only: no decode
                width, height = im.size
        except (OSError, ValueError, Image.DecompressionBombError):
            return
        self.megapixels.inc(width * height / 1e6)
        tiles = count_tiles(request.app.get(ENGINE), width, height, request.query.get("scale"))
        if tiles:
            self.tiles.inc(tiles)


def count_tiles(engine: EnhanceEngine | None, width: int, height: int, scale: str | None) -> int:
    """Tiles the engine's model runs for a ``width`` x ``height`` input (as tiling.upscale cuts them)."""
    if engine is None or not engine.tile_size:
        return 0  # a simulated node has no tiles
    tile, overlap = engine.tile_size, engine.tile_overlap
    info = engine.model.info
    try:
        target = float(scale) if scale else float(info.scale)
    except ValueError:
        return 0
    total = 0
    for _ in range(tiling.plan_passes(info.scale, target)):
        tile_h, tile_w = info.fixed_size if info.fixed_size else (max(tile, 2 * overlap + 1),) * 2
        th, tw = min(tile_h, height), min(tile_w, width)
        ys = tiling.tile_starts(height, th, min(overlap, max(0, th // 2)))
        xs = tiling.tile_starts(width, tw, min(overlap, max(0, tw // 2)))
        total += len(ys) * len(xs)
        width, height = width * info.scale, height * info.scale
    return total


class _Live(Collector):
    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        engine = self.app.get(ENGINE)
        if engine is None:
            return
        info = engine.model.info
        node = InfoMetricFamily("gpunode", "Model, execution provider and version")
        node.add_metric([], {"version": __version__, "model": info.name, "provider": info.provider,
                             "device": info.device, "scale": str(info.scale)})
        yield node
        yield GaugeMetricFamily("gpunode_busy", "Photos being enhanced now", value=engine.busy)
        yield GaugeMetricFamily("gpunode_queued", "Photos waiting for a slot", value=engine.queued)
        yield GaugeMetricFamily("gpunode_slots", "Photos enhanced at once", value=engine.slots)
        speed = engine.throughput()
        if speed is not None:
            yield GaugeMetricFamily("gpunode_throughput_megapixels_per_second",
                                    "Input megapixels per second of inference, recent jobs", value=speed)
        if "CUDA" in info.provider:
            yield from _gpu_memory()


def _gpu_memory() -> Iterator[Metric]:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver, no GPU visible
        return
    used = GaugeMetricFamily("gpunode_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
    total = GaugeMetricFamily("gpunode_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            used.add_metric([str(i)], mem.used)
            total.add_metric([str(i)], mem.total)
    except pynvml.NVMLError:
        return
    finally:
        pynvml.nvmlShutdown()
    yield used
    yield total


METRICS = web.AppKey("gpunode.metrics", NodeMetrics)


def setup(app: web.Application) -> None:
    """``GET /metrics`` and the middleware (outermost, so it sees final statuses) that feeds it."""
    metrics = NodeMetrics(app)
    app[METRICS] = metrics

    def count(request: web.Request, status: int) -> None:
        resource = request.match_info.route.resource
        metrics.requests.labels(resource.canonical if resource else "unmatched", str(status)).inc()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            count(request, exc.status)
            raise
        except BaseException:
            count(request, 500)
            raise
        count(request, response.status)
        if response.status == 200 and request.path == "/v1/enhance" and request.method == "POST":
            metrics.observe(request, response, await request.read())  # the body the view read
        return response

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    app.middlewares.insert(0, middleware)
    app.router.add_get("/metrics", handler)
