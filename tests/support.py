"""Test support: fake GPU nodes (real aiohttp apps that can be told to be slow, fail or
vanish), a handle on a gateway under test, a gateway run as a real process, polling."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from photogate.config import Config, load_config

SECRET = "test-secret-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"
REPO = Path(__file__).resolve().parent.parent
#: Where the tests' nodes live (``webhook.allowed_node_networks`` of every test gateway).
LOOPBACK_NODES = ("127.0.0.0/8", "::1/128")


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG", color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()


async def wait_until(predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    """A port that was free a moment ago. Racy (another process may take it before the child
    binds it): only for servers that cannot bind port 0 themselves (redis-server), which then
    retry on EADDRINUSE. Children that can, bind 0 and report (:func:`reported_port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where a connection is refused, for as long as the block runs: bound here
    and never listening, so no other process can take it and listen."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def reported_port(log: Path, event: str, offset: int = 0) -> int | None:
    """The port a child process bound (``--port 0``) and reported in its JSON log line ``event``
    (``gateway_listening`` for photogate, ``starting`` for gpunode), written after byte ``offset``."""
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event and "port" in record:
            return int(record["port"])
    return None


class FakeNode:
    """A real aiohttp GPU node speaking the node protocol; its result is a 2x PNG of the input."""

    def __init__(self, *, delay: float = 0.0, slots: int = 1, throughput: float | None = None) -> None:
        self.delay = delay
        self.slots = slots
        #: MP/s reported in /health (a prior for the ``fastest`` strategy); None: not reported.
        self.throughput = throughput
        self.mode = "ok"  # ok | error500 | reject400 | hang | garbage
        self.token: str | None = None
        self.server_id: str | None = None
        self.jobs = 0
        self.busy = 0
        self.max_busy = 0
        self.health_hits = 0
        self.seen_tokens: list[str] = []
        self.server: TestServer | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/enhance", self._enhance)
        return app

    async def start(self) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1", port=self.port or 0)
        await self.server.start_server()
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def _health(self, request: web.Request) -> web.Response:
        self.health_hits += 1
        return web.json_response({"status": "ok", "busy": self.busy, "queued": 0, "slots": self.slots,
                                  "model": "fake", "scale": 2, "provider": "none", "throughput": self.throughput})

    async def _enhance(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.seen_tokens.append(auth)
        if self.token is None or auth != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        body = await request.read()
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.mode == "error500":
                return web.json_response({"error": "CUDA out of memory"}, status=500)
            if self.mode == "reject400":
                return web.json_response({"error": "cannot decode image"}, status=400)
            if self.mode == "garbage":
                return web.Response(body=b"\x89PNG\r\n\x1a\n not really", content_type="image/png")
            with Image.open(io.BytesIO(body)) as im:
                out = im.convert("RGB").resize((im.width * 2, im.height * 2))
            buf = io.BytesIO()
            out.save(buf, "PNG")
            self.jobs += 1
            return web.Response(body=buf.getvalue(), content_type="image/png", headers={"X-Node-Port": str(self.port)})
        finally:
            self.busy -= 1


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    base = {
        "webhook.secret": SECRET,
        "admin.token": ADMIN_TOKEN,
        "storage.data_dir": str(tmp_path / "data"),
        "health_check.interval": 0.2,
        "health_check.timeout": 1.0,
        "dispatch.timeout": 10.0,
        # The fake nodes live on loopback, which production refuses unless listed explicitly.
        "webhook.allowed_node_networks": list(LOOPBACK_NODES),
    }
    base.update(overrides)
    return load_config(None, overrides=base, env={})


class Gateway:
    """A test handle on a running gateway: its client plus helpers to drive it."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def app(self) -> web.Application:
        return self.client.server.app  # type: ignore[return-value]

    async def register(self, node: FakeNode, **extra: Any) -> dict[str, Any]:
        resp = await self.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": node.port,
                                                                  "secret": SECRET, **extra})
        body = await resp.json()
        assert resp.status == 200, body
        node.token, node.server_id = body["node_token"], body["server_id"]
        return body

    async def submit(self, data: bytes | None = None, **fields: str) -> str:
        from aiohttp import FormData

        form = FormData()
        form.add_field("file", data or image_bytes(), filename="photo.png", content_type="image/png")
        for key, value in fields.items():
            form.add_field(key, value)
        resp = await self.client.post("/api/v1/enhance", data=form)
        body = await resp.json()
        assert resp.status == 200, body
        assert body["status"] == "queued"
        return body["task_id"]

    async def status(self, task_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/api/v1/status/{task_id}")
        assert resp.status == 200
        return await resp.json()

    async def wait_done(self, task_id: str, timeout: float = 15.0) -> dict[str, Any]:
        final: dict[str, Any] = {}

        async def done() -> bool:
            final.update(await self.status(task_id))
            return final["status"] in ("completed", "failed")

        await wait_until(done, timeout, f"task {task_id} to finish")
        return final

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


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

    async def wait_ready(self, session: Any, timeout: float = 20.0) -> None:
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


async def read_http_answer(reader: asyncio.StreamReader, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one HTTP answer read from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    return int(lines[0].split()[1]), headers, body
