"""gpunode configuration: one frozen dataclass, built once by the CLI (flags over env)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: The bundled default model (waifu2x UpConv7 photo x2), shipped as package data.
BUNDLED_MODEL = "waifu2x-upconv7-photo-x2.onnx"


def bundled_model_path() -> Path:
    """Path of the model shipped inside the package."""
    return Path(str(resources.files("gpunode") / "models" / BUNDLED_MODEL))


def default_state_dir(port: int) -> Path:
    """Per-port state dir, so two nodes on one host never share a node key."""
    return Path.home() / ".local" / "state" / "gpunode" / str(port)


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs; see ``gpunode --help`` for the meaning of each field."""

    host: str = "0.0.0.0"
    port: int = 8000
    gateway_url: str = ""
    secret: str = ""
    #: Standalone inference token (no gateway): benchmarks and local use.
    token: str = ""
    advertise_ip: str = ""
    #: URL answering the node's public IP as plain text (NAT'd nodes).
    ip_url: str = ""
    ip_check_interval: float = 60.0
    #: How often to ask the gateway whether it still lists this node (0: never).
    gateway_check_interval: float = 60.0
    register_backoff_initial: float = 1.0
    register_backoff_max: float = 60.0
    state_dir: Path | None = None
    model_path: Path | None = None
    #: Tile side in input px; 0 = automatic (model.auto_tile_size: 192 on CPU, 512 on CUDA).
    tile_size: int = 0
    tile_overlap: int = 16
    queue_size: int = 8
    #: Inference workers; 0 = one per GPU (1 on CPU).
    slots: int = 0
    #: onnxruntime intra-op threads on CPU; 0 = onnxruntime's default (all cores).
    threads: int = 0
    max_body_bytes: int = 64 * 1024 * 1024
    max_input_pixels: int = 50_000_000
    max_output_pixels: int = 200_000_000
    cpu_only: bool = False
    dev: bool = False
    #: ``--simulate``: MP/s per slot of a simulated node (0: run the real model).
    simulate_speed: float = 0.0
    #: ``--jitter``: each simulated job takes its time times 1 +/- up to this fraction.
    simulate_jitter: float = 0.0
    #: ``--sim-output``: a simulated node answers its input (``echo``) or its input flipped (``mirror``).
    simulate_output: str = "echo"

    @property
    def model_file(self) -> Path:
        return self.model_path or bundled_model_path()

    @property
    def state_path(self) -> Path:
        return self.state_dir or default_state_dir(self.port)
