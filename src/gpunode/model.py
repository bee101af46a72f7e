"""The super-resolution model: an onnxruntime session plus what a probe run learns about it.

Model contract: input float32 NCHW RGB in [0, 1], output the same at s times the size.
The scale is measured by a probe run, never assumed; a model exported with a fixed input
size is tiled at exactly that size; a model that needs H and W divisible by some number
is padded to it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

log = structlog.get_logger("gpunode.model")


#: Default tile sides. On CPU, onnxruntime's memory arena holds one tile's activations:
#: about 180 MB for UpConv7 at 192 px (350 MB at 256), which keeps a 4000x3000 photo
#: under 800 MB peak; per-pixel speed is the same from 128 to 384 px. GPUs want bigger tiles.
CPU_TILE = 192
GPU_TILE = 512


def auto_tile_size(provider: str) -> int:
    return GPU_TILE if provider == "CUDAExecutionProvider" else CPU_TILE


class ModelError(RuntimeError):
    """The model file cannot be used as a gpunode model."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    sha256: str
    scale: int
    #: (H, W) when the model only accepts one input size, else None.
    fixed_size: tuple[int, int] | None
    #: H and W must be multiples of this.
    multiple: int
    provider: str
    device: str
    input_name: str
    output_name: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def choose_providers(cpu_only: bool = False) -> list[str]:
    """CUDA then CPU where CUDA is offered at all, else CPU only."""
    if not cpu_only and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def count_gpus(cpu_only: bool = False) -> int:
    """GPUs onnxruntime could use (0 on a CPU host)."""
    if cpu_only or "CUDAExecutionProvider" not in ort.get_available_providers():
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
            return max(1, sum(1 for ln in out.stdout.splitlines() if ln.startswith("GPU ")))
        except (OSError, subprocess.SubprocessError):
            pass
    return 1


def describe_device(provider: str, device_id: int = 0) -> str:
    """GPU name and memory where CUDA runs, else the CPU model."""
    if provider == "CUDAExecutionProvider":
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                out = subprocess.run(
                    [smi, f"--id={device_id}", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=10, check=False,
                )
                if out.returncode == 0 and out.stdout.strip():
                    return out.stdout.strip().splitlines()[0]
            except (OSError, subprocess.SubprocessError):
                pass
        return f"cuda:{device_id}"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} cores)"


class SRModel:
    """One onnxruntime session; ``run`` is thread-safe but meant for one worker per device."""

    def __init__(self, path: str | Path, *, cpu_only: bool = False, threads: int = 0, device_id: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # Spinning worker threads would steal the CPU from the event loop between tiles.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The CPU memory arena stays on: without it each tile costs 20-30 % more time on
        # CPU. Every tile has the same shape (the last one is aligned to the edge, not
        # cut short), so the arena holds one tile's activations, not a growing peak.
        providers: list[str | tuple[str, dict[str, object]]] = []
        for p in choose_providers(cpu_only):
            providers.append((p, {"device_id": device_id}) if p == "CUDAExecutionProvider" else p)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"cannot load model {path}: {exc}") from exc
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError("a gpunode model has exactly one input and one output")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ModelError(f"model input must be NCHW with 3 channels, got {shape}")
        h, w = shape[2], shape[3]
        fixed = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
        self.provider = self.session.get_providers()[0]
        self.scale, self.multiple = self._probe(fixed)
        self.info = ModelInfo(
            name=path.stem,
            path=str(path),
            sha256=_sha256(path),
            scale=self.scale,
            fixed_size=fixed,
            multiple=self.multiple,
            provider=self.provider,
            device=describe_device(self.provider, device_id),
            input_name=self.input_name,
            output_name=self.output_name,
        )
        log.info("model_loaded", model=self.info.name, scale=self.scale, provider=self.provider,
                 fixed_size=fixed, multiple=self.multiple, device=self.info.device)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one NCHW float32 batch; returns the output array."""
        output: np.ndarray = self.session.run([self.output_name], {self.input_name: x})[0]
        return output

    def _try(self, h: int, w: int) -> tuple[int, int] | None:
        x = np.full((1, 3, h, w), 0.5, dtype=np.float32)
        try:
            y = self.run(x)
        except Exception:  # noqa: BLE001 - a failing size is what the probe looks for
            return None
        return int(y.shape[2]), int(y.shape[3])

    def _probe(self, fixed: tuple[int, int] | None) -> tuple[int, int]:
        if fixed:
            out = self._try(*fixed)
            if out is None:
                raise ModelError(f"probe run at the model's fixed size {fixed} failed")
            return self._scale_of(fixed, out), 1
        for multiple in (1, 2, 4, 8, 16, 32):
            size = -(-17 // multiple) * multiple  # smallest multiple >= 17
            out = self._try(size, size + multiple)
            if out is not None:
                return self._scale_of((size, size + multiple), out), multiple
        raise ModelError("probe runs failed at every size: is this an image-to-image model?")

    @staticmethod
    def _scale_of(inp: tuple[int, int], out: tuple[int, int]) -> int:
        sh, sw = out[0] / inp[0], out[1] / inp[1]
        if sh != sw or sh != int(sh) or sh < 1:
            raise ModelError(f"model maps {inp} to {out}: gpunode needs one integer scale >= 1")
        return int(sh)
