"""The gateway as a real process: kill and restart mid-run, memory under a large upload."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import aiohttp
from helpers.public_api import download, register, servers, submit, wait_finished
from support import SECRET, FakeNode, image_bytes, wait_until

CONFIG = """
health_check:
  interval: 0.3
  timeout: 1
dispatch:
  timeout: 10
"""


async def test_kill_and_restart_mid_run_loses_nothing(gateway_process, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet: list[FakeNode] = [await nodes(delay=0.15) for _ in range(2)]
    gw = gateway_process(CONFIG)
    gw.start()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
        for node in fleet:
            body = await register(session, gw.url, node.port)
            node.token, node.server_id = body["node_token"], body["server_id"]
        ids = [await submit(session, gw.url, image_bytes(32, 24)) for _ in range(20)]
        await wait_until(lambda: sum(n.jobs for n in fleet) >= 3, 10, "some tasks to finish")
        gw.kill()  # SIGKILL: no cleanup at all
        done_before = sum(n.jobs for n in fleet)
        assert done_before < 20, "the run finished before the kill; make the nodes slower"

        gw.start()
        await gw.wait_ready(session)
        finals = await wait_finished(session, gw.url, ids, 30)  # a task lost across the restart fails here
        assert [f["status"] for f in finals.values()] == ["completed"] * 20
        for task_id in ids:
            code, data = await download(session, gw.url, task_id)
            assert code == 200 and data.startswith(b"\x89PNG")
        listed = [(s["server_id"], s["port"]) for s in await servers(session, gw.url)]
        assert listed == [("GPU-001", fleet[0].port), ("GPU-002", fleet[1].port)]
        # The counter survived too: the next node is GPU-003.
        extra = await nodes()
        assert (await register(session, gw.url, extra.port))["server_id"] == "GPU-003"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_50mb_upload_refused_without_buffering(gateway_process, nodes) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_process(CONFIG)
    gw.start()
    node = await nodes()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
        node.token = (await register(session, gw.url, node.port))["node_token"]
        assert gw.proc is not None
        before = _peak_rss_kib(gw.proc.pid)
        size = 50 * 1024 * 1024

        async def body():  # type: ignore[no-untyped-def]
            # Chunked, with no Content-Length: the gateway must count as it streams.
            yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n" \
                  b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
            chunk = b"\0" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                yield chunk
            yield b"\r\n--b--\r\n"

        status = None
        try:
            async with session.post(gw.url + "/api/v1/enhance", data=body(),
                                    headers={"Content-Type": "multipart/form-data; boundary=b"}) as resp:
                status = resp.status
                error = (await resp.json())["error"]
        except aiohttp.ClientError:
            # The gateway may close the connection as soon as it has answered 413.
            status = None
        if status is not None:
            assert status == 413 and "limit" in error
        grown_mib = (_peak_rss_kib(gw.proc.pid) - before) / 1024
        print(f"chunked 50 MiB upload: status {status}, peak RSS growth {grown_mib:.2f} MiB")
        assert grown_mib < 15, f"gateway memory grew by {grown_mib:.1f} MiB for a 50 MiB upload"
        # With a Content-Length the answer is immediate and certain.
        async with session.post(gw.url + "/api/v1/enhance", data=io.BytesIO(b"x" * size),
                                headers={"Content-Type": "multipart/form-data; boundary=b"}) as resp:
            assert resp.status == 413
        assert (_peak_rss_kib(gw.proc.pid) - before) / 1024 < 15 + 1
        # Nothing of it was kept on disk.
        assert not any(p.is_file() for p in (gw.data_dir / "blobs" / "inputs").iterdir())
        assert gw.proc.poll() is None  # still serving


async def test_sigterm_stops_cleanly(gateway_process) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_process(CONFIG)
    gw.start()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGTERM)
    assert await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 10) == 0
    log = gw.log.read_text()
    assert '"event": "gateway_stopped"' in log
    assert SECRET not in log


async def test_serves_https_with_configured_certificate(gateway_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import ssl
    import subprocess

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    gw = gateway_process(CONFIG + f"server:\n  tls:\n    cert: {cert}\n    key: {key}\n")
    gw.start()
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        https = gw.url.replace("http://", "https://")

        async def up() -> bool:
            try:
                async with session.get(https + "/api/v1/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectorError:
                return False

        await wait_until(up, 20, "the gateway to answer over HTTPS")
        async with session.get(https + "/api/v1/info") as resp:
            assert (await resp.json())["name"] == "photogate"
