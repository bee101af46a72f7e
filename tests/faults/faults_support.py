"""Helpers for the fault suite: real node processes (``gpunode --simulate`` and the
misbehaving ``faults_node.py``), photos told apart by content, bounded client loops."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image
from support import SECRET, reported_port, wait_until

PY = sys.executable
FAULTS_NODE = Path(__file__).resolve().parent / "faults_node.py"


def unique_photo(i: int, width: int = 40, height: int = 30) -> bytes:
    """A PNG nobody else has: its colour encodes ``i``."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (i & 255, (i >> 8) & 255, 128 + ((i >> 16) & 127))).save(buf, "PNG")
    return buf.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Procs:
    """Processes a test starts; every one is killed at teardown, by its own pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs[name], self.argv[name] = proc, argv
        return proc

    async def serve(self, name: str, argv_for: Callable[[int], list[str]], timeout: float = 30.0) -> int:
        """Start a server on port 0 and answer the port it bound, which it reports in its log line
        ``starting`` (gpunode, faults_node.py): no free-port race. Its argv is recorded with that
        port, so :meth:`restart` brings it back on the same port."""
        log = self.workdir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        proc = self.start(name, argv_for(0))
        found: list[int] = []

        def reported() -> bool:
            assert proc.poll() is None, f"{name} exited: {self.log(name)}"
            port = reported_port(log, "starting", offset)
            found.extend([port] if port else [])
            return bool(found)

        await wait_until(reported, timeout, f"{name} to report its port")
        self.argv[name] = argv_for(found[0])
        return found[0]

    def restart(self, name: str, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        self.kill(name)
        return self.start(name, argv or self.argv[name])

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process dies at once too
            proc.kill()
            proc.wait(10)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def sim_node_argv(port: int, gateway_url: str, state_dir: Path, *, speed: float, slots: int = 1,
                  ip: str = "127.0.0.1", gateway_check: float = 0.0) -> list[str]:
    return [PY, "-m", "gpunode", "--simulate", "--speed", str(speed), "--slots", str(slots),
            "--host", ip, "--advertise-ip", ip, "--port", str(port), "--state-dir", str(state_dir),
            "--gateway", gateway_url, "--secret", SECRET, "--register-backoff-max", "0.5",
            "--gateway-check-interval", str(gateway_check), "--queue-size", "16"]


def fault_node_argv(port: int, mode: str = "ok", *, delay: float = 0.0, period: float = 1.0) -> list[str]:
    return [PY, str(FAULTS_NODE), "--port", str(port), "--mode", mode, "--delay", str(delay),
            "--period", str(period)]


async def wait_answers(session: aiohttp.ClientSession, url: str, timeout: float = 20.0) -> None:
    async def up() -> bool:
        try:
            async with session.get(url) as resp:
                return resp.status < 500
        except (aiohttp.ClientError, OSError):
            return False

    await wait_until(up, timeout, f"{url} to answer")


async def register(session: aiohttp.ClientSession, base: str, port: int, ip: str = "127.0.0.1") -> str:
    async with session.post(base + "/webhook/register", json={"ip": ip, "port": port, "secret": SECRET}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["server_id"])


async def control(session: aiohttp.ClientSession, port: int, **settings: Any) -> None:
    async with session.post(f"http://127.0.0.1:{port}/_control", json=settings) as resp:
        assert resp.status == 200, await resp.text()


async def node_stats(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/_stats") as resp:
        return dict(await resp.json())


async def submit(session: aiohttp.ClientSession, base: str, photo: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", photo, filename="photo.png", content_type="image/png")
    async with session.post(base + "/api/v1/enhance", data=form) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["task_id"])


async def status(session: aiohttp.ClientSession, base: str, task_id: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/status/{task_id}") as resp:
        assert resp.status == 200, f"task {task_id} lost: HTTP {resp.status}"
        return dict(await resp.json())


async def wait_finished(session: aiohttp.ClientSession, base: str, ids: list[str],
                        timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    finals: dict[str, dict[str, Any]] = {}

    async def done() -> bool:
        for task_id in ids:
            if finals.get(task_id, {}).get("status") not in ("completed", "failed"):
                finals[task_id] = await status(session, base, task_id)
        return all(f["status"] in ("completed", "failed") for f in finals.values())

    await wait_until(done, timeout, f"{len(ids)} tasks to finish")
    return finals


async def download(session: aiohttp.ClientSession, base: str, task_id: str) -> tuple[int, bytes]:
    async with session.get(f"{base}/api/v1/download/{task_id}") as resp:
        return resp.status, await resp.read()


async def servers(session: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    async with session.get(base + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as resp:
        return list((await resp.json())["data"]["servers"])


async def eventually(check: Any, timeout: float, what: str) -> None:
    """``wait_until`` for a coroutine function that may raise while the condition is not there yet."""
    async def ok() -> bool:
        try:
            return bool(await check())
        except (aiohttp.ClientError, OSError, KeyError, AssertionError):
            return False

    await wait_until(ok, timeout, what)


__all__ = [
    "PY",
    "Procs",
    "asyncio",
    "control",
    "digest",
    "download",
    "eventually",
    "fault_node_argv",
    "node_stats",
    "register",
    "servers",
    "sim_node_argv",
    "status",
    "submit",
    "time",
    "unique_photo",
    "wait_answers",
    "wait_finished",
]
