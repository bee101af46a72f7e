"""A simulated engine for ``gpunode --simulate``: the real node protocol, no model.

Each job holds one of ``slots`` for ``megapixels / speed`` seconds (times an optional
random jitter). Like a real node, it reports in ``/health`` only the throughput it has
measured on its own finished jobs (``None`` until the first one), so a gateway learns a
simulated node's speed the way it learns a real one's.

What it answers (``output``):

- ``echo``: the input image itself; costs no CPU, so the node's own work stays out of
  the timing (scheduling and overhead benchmarks, most tests);
- ``mirror``: the input flipped left to right (:func:`mirror`), in the format the request
  asks for, else the input's (PNG for PNG, JPEG otherwise). A client can compute it, and a
  gateway that served the input back as the result is caught (the soak). Decoding and
  encoding run in the executor; keep the photos small.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections import deque
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from . import imaging
from .errors import BadImage, QueueFull
from .inference import THROUGHPUT_WINDOW_S, EnhanceRequest, EnhanceResult
from .model import ModelInfo

MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
OUTPUTS = ("echo", "mirror")


class _SimSession:
    def get_providers(self) -> list[str]:
        return ["simulated"]


@dataclass
class SimModel:
    info: ModelInfo
    session: _SimSession
    scale: int = 1


def mirror(data: bytes, fmt: str | None, quality: int, *, max_pixels: int) -> tuple[bytes, str]:
    """The image in ``data`` flipped left to right, encoded as ``fmt`` (jpeg/png/webp; default:
    PNG for PNG or alpha input, else JPEG); answers (body, content type). Blocking: run it in
    an executor."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise BadImage(f"image has {im.width * im.height} pixels, this node takes at most {max_pixels}")
            im.load()
            source, alpha = im.format or "", "A" in im.getbands() or "transparency" in im.info
            plain = im if im.mode in ("RGB", "RGBA", "L", "LA") else im.convert("RGBA" if alpha else "RGB")
            flipped = ImageOps.mirror(plain)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise BadImage(f"not an image: {exc}") from None
    out = imaging.normalize_format(fmt) if fmt else imaging.default_format(source, alpha)
    return imaging.encode(flipped, out, quality), imaging.FORMATS[out]


class SimEngine:
    """A :class:`gpunode.engines.EnhanceEngine` whose jobs only wait (no model)."""

    def __init__(self, *, speed: float, slots: int, queue_size: int, jitter: float = 0.0,
                 rng: random.Random | None = None, output: str = "echo", max_pixels: int = 50_000_000) -> None:
        if speed <= 0:
            raise ValueError("--speed must be > 0 megapixels per second")
        if slots < 1:
            raise ValueError("--slots must be >= 1")
        if output not in OUTPUTS:
            raise ValueError(f"--sim-output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.speed = speed
        self.jitter = jitter
        self.slots = slots
        self.queue_size = queue_size
        self.output = output
        self.max_pixels = max_pixels
        self.busy = 0
        self._admitted = 0
        #: The most jobs this node has held at once (running or waiting for a slot) and the
        #: jobs it has run: a test reads them from /health to check the gateways' accounting.
        self.max_inflight = 0
        self.jobs_done = 0
        #: A simulated node cuts no tiles.
        self.tile_size: int | None = None
        self.tile_overlap = 0
        self._rng = rng or random.Random()
        self._free = asyncio.Semaphore(slots)
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=256)  # (t, megapixels, seconds)
        info = ModelInfo(
            name="simulated", path="simulated", sha256="", scale=1, fixed_size=None, multiple=1,
            provider="simulated", device=f"simulated, {speed:g} MP/s per slot", input_name="", output_name="",
        )
        self.model = SimModel(info, _SimSession())

    @property
    def queued(self) -> int:
        return self._admitted - self.busy

    def throughput(self) -> float | None:
        """Megapixels per second of simulated inference, measured over the recent window, as
        :meth:`gpunode.inference.Engine.throughput`: ``None`` until a job has finished."""
        now = time.monotonic()
        recent = [(mp, sec) for t, mp, sec in self._recent if now - t <= THROUGHPUT_WINDOW_S]
        seconds = sum(sec for _, sec in recent)
        return round(sum(mp for mp, _ in recent) / seconds, 4) if recent and seconds > 0 else None

    def health_extra(self) -> dict[str, int]:
        return {"max_inflight": self.max_inflight, "jobs_done": self.jobs_done}

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
                    t_infer = time.perf_counter()
                    await asyncio.sleep(seconds)
                    measured = time.perf_counter() - t_infer
                finally:
                    self.busy -= 1
            # What a real node measures: its own inference time, once the job is done.
            self._recent.append((time.monotonic(), width * height / 1e6, measured))
            body, content_type = data, MIME.get(fmt, "application/octet-stream")
            if self.output == "mirror":
                body, content_type = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: mirror(data, req.format, req.quality, max_pixels=self.max_pixels))
            self.jobs_done += 1
            total_ms = (time.perf_counter() - t_start) * 1000
            return EnhanceResult(body=body, content_type=content_type, width=width, height=height,
                                 inference_ms=measured * 1000, total_ms=total_ms)
        finally:
            self._admitted -= 1
