"""The gateway run as a real process (``python -m photogate``), for kill, restart and memory tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from .gateway import ADMIN_TOKEN, LOOPBACK_NODES
from .polling import wait_until
from .ports import reported_port
from .public_api import SECRET


class ChildProcess:
    """A server the tests run as a real process: ``kill`` (SIGKILL) or ``stop`` (SIGTERM,
    then SIGKILL after 10 s)."""

    proc: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class GatewayProcess(ChildProcess):
    """The gateway as a real process (``python -m photogate``), for kill/restart and memory tests.

    The first start binds port 0 and the port is read from its ``gateway_listening`` log line
    (no free-port race); a restart asks for that same port again, as a restarted service would."""

    def __init__(self, tmp_path: Path, config_text: str) -> None:
        self._port: int | None = None
        self.config_file = tmp_path / "gateway.yaml"
        config = yaml.safe_load(config_text) or {}
        config.setdefault("webhook", {}).setdefault("allowed_node_networks", list(LOOPBACK_NODES))
        self.config_file.write_text(yaml.safe_dump(config))
        self.data_dir = tmp_path / "gwdata"
        self.log = tmp_path / "gateway.log"
        self._log_offset = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:  # asked before wait_ready(): wait for the report here
            deadline = time.monotonic() + 30
            while (port := self._reported()) is None:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the gateway process never reported its port"
                time.sleep(0.02)
            self._port = port
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _reported(self) -> int | None:
        return reported_port(self.log, "gateway_listening", self._log_offset)

    def start(self) -> None:
        env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PHOTOGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "photogate", "--config", str(self.config_file), "--port", str(self._port or 0),
                 "--data-dir", str(self.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        async def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            if self._port is None:
                self._port = self._reported()
                if self._port is None:
                    return False
            try:
                async with session.get(self.url + "/api/v1/health") as resp:
                    return resp.status == 200
            except OSError:
                return False

        await wait_until(up, timeout, "the gateway process to answer")
