"""A simulated engine for ``gpunode --simulate``: the real node protocol, no model.

Each job holds one of ``slots`` for ``megapixels / speed`` seconds (times an optional
random jitter) and answers the input image itself, so the node's own CPU cost stays out
of the timing. Benchmarks and tests use it for many or heterogeneous nodes on one machine.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections import deque
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .errors import BadImage, QueueFull
from .inference import EnhanceRequest, EnhanceResult
from .model import ModelInfo

MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}


class _SimSession:
    def get_providers(self) -> list[str]:
        return ["simulated"]


@dataclass
class SimModel:
    info: ModelInfo
    session: _SimSession
    scale: int = 1


class SimEngine:
    """Duck-types :class:`gpunode.inference.Engine` for the views and the registrar."""

    def __init__(self, *, speed: float, slots: int, queue_size: int, jitter: float = 0.0,
                 rng: random.Random | None = None) -> None:
        if speed <= 0:
            raise ValueError("--speed must be > 0 megapixels per second")
        if slots < 1:
            raise ValueError("--slots must be >= 1")
        self.speed = speed
        self.jitter = jitter
        self.slots = slots
        self.queue_size = queue_size
        self.busy = 0
        self._admitted = 0
        #: The most jobs this node has held at once (running or waiting for a slot) and the
        #: jobs it has run: a test reads them from /health to check the gateways' accounting.
        self.max_inflight = 0
        self.jobs_done = 0
        self._rng = rng or random.Random()
        self._free = asyncio.Semaphore(slots)
        self._recent: deque[tuple[float, float]] = deque(maxlen=256)
        info = ModelInfo(
            name="simulated", path="simulated", sha256="", scale=1, fixed_size=None, multiple=1,
            provider="simulated", device=f"simulated, {speed:g} MP/s per slot", input_name="", output_name="",
        )
        self.model = SimModel(info, _SimSession())

    @property
    def queued(self) -> int:
        return self._admitted - self.busy

    def throughput(self) -> float:
        # The configured speed is the honest prior; it is what the node would measure.
        return self.speed

    def close(self) -> None:
        pass

    async def enhance(self, data: bytes, req: EnhanceRequest) -> EnhanceResult:
        if self._admitted >= self.slots + self.queue_size:
            raise QueueFull(f"node busy: {self.busy} running, {self.queued} queued; try another node")
        t_start = time.perf_counter()
        self._admitted += 1
        self.max_inflight = max(self.max_inflight, self._admitted)
        try:
            try:
                # Header only (no decode): microseconds, fine on the event loop.
                with Image.open(io.BytesIO(data)) as im:
                    width, height, fmt = im.width, im.height, im.format or ""
            except (UnidentifiedImageError, OSError) as exc:
                raise BadImage(f"not an image: {exc}") from None
            seconds = width * height / 1e6 / self.speed
            if self.jitter:
                seconds *= max(0.0, 1.0 + self._rng.uniform(-self.jitter, self.jitter))
            async with self._free:
                self.busy += 1
                try:
                    await asyncio.sleep(seconds)
                finally:
                    self.busy -= 1
            self.jobs_done += 1
            total_ms = (time.perf_counter() - t_start) * 1000
            return EnhanceResult(body=data, content_type=MIME.get(fmt, "application/octet-stream"), width=width,
                                 height=height, inference_ms=seconds * 1000, total_ms=total_ms)
        finally:
            self._admitted -= 1
