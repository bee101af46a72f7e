"""The inference engine: a bounded queue in front of one worker thread per device.

onnxruntime's ``run`` releases the GIL, so while a photo is being enhanced the event
loop keeps answering ``/health``. Decoding and encoding run in the loop's default
executor, inference in a dedicated executor with exactly ``slots`` threads.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
from PIL import Image

from . import imaging, tiling
from .errors import BadImage, QueueFull
from .model import SRModel, auto_tile_size

log = structlog.get_logger("gpunode.inference")

#: Throughput is averaged over the jobs of the last this many seconds.
THROUGHPUT_WINDOW_S = 300.0
MAX_SCALE = 16.0


@dataclass(frozen=True)
class EnhanceRequest:
    scale: float | None = None
    format: str | None = None
    quality: int = 95


@dataclass(frozen=True)
class EnhanceResult:
    body: bytes
    content_type: str
    width: int
    height: int
    inference_ms: float
    total_ms: float


class Engine:
    """Runs enhancement jobs: at most ``slots`` at once, at most ``queue_size`` waiting."""

    def __init__(self, models: list[SRModel], *, tile_size: int, tile_overlap: int, queue_size: int,
                 max_input_pixels: int, max_output_pixels: int) -> None:
        if not models:
            raise ValueError("an engine needs at least one model session")
        self.models = models
        self.model = models[0]
        self.slots = len(models)
        self.tile_size = tile_size or auto_tile_size(self.model.provider)
        self.tile_overlap = tile_overlap
        self.queue_size = queue_size
        self.max_input_pixels = max_input_pixels
        self.max_output_pixels = max_output_pixels
        self.busy = 0
        self._admitted = 0
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.slots):
            self._free.put_nowait(i)
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gpunode-infer-{i}")
                           for i in range(self.slots)]
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=256)  # (t, megapixels, seconds)

    @property
    def queued(self) -> int:
        return self._admitted - self.busy

    def throughput(self) -> float | None:
        """Megapixels of input per second of inference over the recent window."""
        now = time.monotonic()
        recent = [(mp, sec) for t, mp, sec in self._recent if now - t <= THROUGHPUT_WINDOW_S]
        if not recent:
            return None
        seconds = sum(sec for _, sec in recent)
        return round(sum(mp for mp, _ in recent) / seconds, 4) if seconds > 0 else None

    def health_extra(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        for ex in self._executors:
            ex.shutdown(wait=True, cancel_futures=True)

    def _check_scale(self, req: EnhanceRequest, w: int, h: int) -> float:
        scale = float(self.model.scale) if req.scale is None else req.scale
        if not (0 < scale <= MAX_SCALE):
            raise BadImage(f"scale must be > 0 and <= {MAX_SCALE:g}, got {scale:g}")
        ow, oh = tiling.output_size((w, h), scale)
        passes = tiling.plan_passes(self.model.scale, scale)
        biggest = max(ow * oh, w * h * self.model.scale ** (2 * passes))
        if biggest > self.max_output_pixels:
            raise BadImage(f"result too large: {w}x{h} at scale {scale:g} needs {biggest} pixels, "
                           f"this node produces at most {self.max_output_pixels}")
        return scale

    def _infer(self, slot: int, decoded: imaging.Decoded, scale: float) -> tuple[Image.Image, float]:
        model = self.models[slot]
        t0 = time.perf_counter()
        tiles = tiling.Tiles(tile=self.tile_size, overlap=self.tile_overlap, fixed_size=model.info.fixed_size)
        rgb = tiling.enhance_rgb(model, decoded.rgb, scale, tiles)
        decoded.rgb = rgb  # drop the input pixels as soon as they are not needed
        return imaging.assemble(rgb, decoded), time.perf_counter() - t0

    async def enhance(self, data: bytes, req: EnhanceRequest) -> EnhanceResult:
        """Decode, enhance, encode; raises QueueFull/BadImage/UnsupportedImage."""
        if self._admitted >= self.slots + self.queue_size:
            raise QueueFull(f"node busy: {self.busy} running, {self.queued} queued; try another node")
        loop = asyncio.get_running_loop()
        t_start = time.perf_counter()
        self._admitted += 1
        try:
            fmt = imaging.normalize_format(req.format) if req.format else None
            if not 1 <= req.quality <= 100:
                raise BadImage(f"quality must be 1..100, got {req.quality}")
            # Every limit from the header first: no decode, no inference for a photo refused anyway.
            header = await loop.run_in_executor(None, lambda: imaging.probe(data, max_pixels=self.max_input_pixels))
            scale = self._check_scale(req, header.width, header.height)
            imaging.check_output(fmt or imaging.default_format(header.format, header.alpha),
                                 *tiling.output_size((header.width, header.height), scale))
            decoded = await loop.run_in_executor(None, lambda: imaging.decode(data, max_pixels=self.max_input_pixels))
            in_w, in_h = decoded.rgb.size
            fmt = fmt or imaging.default_format(decoded.format, decoded.alpha is not None)
            imaging.check_output(fmt, *tiling.output_size((in_w, in_h), scale))
            slot = await self._free.get()
            self.busy += 1
            try:
                out, seconds = await loop.run_in_executor(self._executors[slot], self._infer, slot, decoded, scale)
            finally:
                self.busy -= 1
                self._free.put_nowait(slot)
            megapixels = in_w * in_h / 1e6
            self._recent.append((time.monotonic(), megapixels, seconds))
            body = await loop.run_in_executor(
                None, lambda: imaging.encode(out, fmt, req.quality, exif=decoded.exif, icc=decoded.icc))
            total_ms = (time.perf_counter() - t_start) * 1000
            log.info("enhanced", width=in_w, height=in_h, scale=scale, out_width=out.width,
                     out_height=out.height, format=fmt, inference_ms=round(seconds * 1000, 1),
                     total_ms=round(total_ms, 1))
            return EnhanceResult(body=body, content_type=imaging.FORMATS[fmt], width=out.width, height=out.height,
                                 inference_ms=seconds * 1000, total_ms=total_ms)
        finally:
            self._admitted -= 1
