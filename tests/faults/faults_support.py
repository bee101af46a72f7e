"""Helpers for the fault suite: real node processes (``gpunode --simulate`` and the
misbehaving ``faults_node.py``) and their controls. The public API client, photos and
polling are in ``tests/helpers/``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from helpers.polling import wait_until
from helpers.ports import reported_port
from helpers.public_api import SECRET

PY = sys.executable
FAULTS_NODE = Path(__file__).resolve().parent / "faults_node.py"


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


async def control(session: aiohttp.ClientSession, port: int, **settings: Any) -> None:
    async with session.post(f"http://127.0.0.1:{port}/_control", json=settings) as resp:
        assert resp.status == 200, await resp.text()


async def node_stats(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/_stats") as resp:
        return dict(await resp.json())
