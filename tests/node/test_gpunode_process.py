"""Real ``gpunode`` processes: the plain run command, and peak memory on a 4000x3000 photo."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers.photos import encoded
from helpers.polling import wait_until
from node_support import FakeGateway, photo, tiny_model
from PIL import Image
from support import reported_port

SLOW = os.environ.get("GPUNODE_SLOW_TESTS") == "1"


def gpunode_command() -> list[str]:
    script = shutil.which("gpunode", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gpunode"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


async def test_plain_run_command_serves_the_bundled_model_on_cpu(tmp_path: Path, fake_gateway: FakeGateway,
                                                                   http) -> None:  # type: ignore[no-untyped-def]
    """Acceptance 1: ``gpunode --gateway URL --secret S --port P`` and nothing else (P = 0: a free
    port, which it registers)."""
    await fake_gateway.start()
    env = {**os.environ, "GPUNODE_STATE_DIR": str(tmp_path / "state"),
           # Tests never use the UDP route trick: the advertised IP comes from the environment.
           "GPUNODE_ADVERTISE_IP": "127.0.0.1"}
    env.pop("GPUNODE_MODEL", None)
    proc = await asyncio.create_subprocess_exec(
        *gpunode_command(), "--gateway", fake_gateway.url, "--secret", fake_gateway.secret, "--port", "0",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(lambda: "GPU-001" in fake_gateway.servers, timeout=60)
        port = fake_gateway.servers["GPU-001"]["port"]  # the port it bound: served below
        assert port > 0
        url = f"http://127.0.0.1:{port}"
        async with http.get(f"{url}/health") as resp:
            health = await resp.json()
        assert health["provider"] == "CPUExecutionProvider" and health["model"] == "waifu2x-upconv7-photo-x2"
        token = fake_gateway.token_of("GPU-001")
        src = photo().resize((32, 24))
        async with http.post(f"{url}/v1/enhance", data=encoded(src, "JPEG"),
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}) as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            assert Image.open(io.BytesIO(await resp.read())).size == (64, 48)
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    assert fake_gateway.unregistrations()[0]["server_id"] == "GPU-001"


async def _enhance_big_photo(tmp_path: Path, http, model: Path | None, timeout: float) -> tuple[float, tuple[int, int]]:  # type: ignore[no-untyped-def]
    args = ["--host", "127.0.0.1", "--port", "0", "--token", "tok", "--state-dir", str(tmp_path / "s")]
    if model is not None:
        args += ["--model", str(model)]
    log = tmp_path / "gpunode.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*gpunode_command(), *args, stdout=out, stderr=out)
    try:
        def port() -> int | None:
            assert proc.returncode is None, log.read_text()[-3000:]
            return reported_port(log, "starting")

        url = f"http://127.0.0.1:{await wait_until(port, timeout=60, interval=0.05)}"

        async def up() -> bool:
            try:
                async with http.get(f"{url}/health") as resp:
                    return resp.status == 200
            except OSError:
                return False
        await wait_until(up, timeout=60, interval=0.1)
        big = photo().resize((4000, 3000), Image.Resampling.BICUBIC)
        body = encoded(big, "JPEG", quality=92)
        del big
        async with http.post(f"{url}/v1/enhance?scale=2&format=jpeg", data=body,
                             headers={"Authorization": "Bearer tok"}, timeout=timeout) as resp:
            assert resp.status == 200, await resp.text()
            size = (int(resp.headers["X-Output-Width"]), int(resp.headers["X-Output-Height"]))
            out = await resp.read()
        assert Image.open(io.BytesIO(out)).size == size
        return peak_rss_mb(proc.pid), size
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for peak RSS")
async def test_4000x3000_photo_peak_rss_under_800mb_pipeline(tmp_path: Path, http) -> None:  # type: ignore[no-untyped-def]
    """The full node pipeline (decode, tiling, blending, encode) with a cheap x2 model."""
    tiny_model(tmp_path / "nearest-x2.onnx")
    rss, size = await _enhance_big_photo(tmp_path, http, tmp_path / "nearest-x2.onnx", timeout=100)
    print(f"peak RSS, 4000x3000 -> {size[0]}x{size[1]}, nearest-x2 model: {rss:.0f} MB")
    assert size == (8000, 6000)
    assert rss < 800


@pytest.mark.skipif(not SLOW, reason="about 2 minutes of CPU: set GPUNODE_SLOW_TESTS=1")
@pytest.mark.timeout(900)
async def test_4000x3000_photo_peak_rss_under_800mb_bundled_model(tmp_path: Path, http) -> None:  # type: ignore[no-untyped-def]
    rss, size = await _enhance_big_photo(tmp_path, http, None, timeout=850)
    print(f"peak RSS, 4000x3000 -> {size[0]}x{size[1]}, bundled model: {rss:.0f} MB")
    assert size == (8000, 6000)
    assert rss < 800
