"""What the views, the metrics and the registration need from an engine: the real one
(:class:`gpunode.inference.Engine`) or the simulated one (:class:`gpunode.simulate.SimEngine`)."""

from __future__ import annotations

from typing import Protocol

from .inference import EnhanceRequest, EnhanceResult
from .model import ModelInfo


class Session(Protocol):
    def get_providers(self) -> list[str]: ...


class LoadedModel(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    @property
    def session(self) -> Session: ...


class EnhanceEngine(Protocol):
    """Runs enhancement jobs: at most ``slots`` at once, at most ``queue_size`` waiting."""

    @property
    def model(self) -> LoadedModel: ...

    @property
    def slots(self) -> int: ...

    @property
    def queue_size(self) -> int: ...

    @property
    def busy(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def tile_size(self) -> int | None:
        """Tile side in input pixels; ``None``: this engine cuts no tiles (simulated)."""

    @property
    def tile_overlap(self) -> int: ...

    def throughput(self) -> float | None:
        """Megapixels of input per second of inference over the recent window."""

    def health_extra(self) -> dict[str, int]:
        """Fields this engine adds to ``/health`` (a simulated node: its own job counts)."""

    def close(self) -> None: ...

    async def enhance(self, data: bytes, req: EnhanceRequest) -> EnhanceResult:
        """Decode, enhance, encode; raises QueueFull/BadImage/UnsupportedImage."""
