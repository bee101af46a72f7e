"""Helpers for the gpunode tests: the bundled photos, a fake gateway, tiny ONNX models.
Polling, ports and photo encoding are in ``tests/helpers/``."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from aiohttp import web
from helpers.ports import free_socket
from onnx import TensorProto, helper
from PIL import Image

HERE = Path(__file__).parent
IMAGES = HERE / "images"
SHARED = HERE.parents[2] / "shared"  # ../shared next to the checkout; absent in user clones
REFERENCE_MODEL = SHARED / "reference-models" / "waifu2x-upconv7-photo-x2.onnx"


def photo(name: str = "astronaut_crop.png") -> Image.Image:
    return Image.open(IMAGES / name).convert("RGB")


@dataclass
class FakeGateway:
    """A real aiohttp app speaking the gateway's webhook API, with knobs for tests."""

    secret: str = "test-secret"
    ip: str = "127.0.0.1"  # what /myip answers
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    counter: int = 0
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    sock: socket.socket = field(default_factory=free_socket)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def registrations(self) -> list[dict[str, Any]]:
        return [p for kind, p in self.events if kind == "register"]

    def unregistrations(self) -> list[dict[str, Any]]:
        return [p for kind, p in self.events if kind == "unregister"]

    def lose_store(self) -> None:
        self.servers.clear()
        self.by_key.clear()

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("secret") != self.secret:
            return web.json_response({"error": "invalid secret"}, status=401)
        self.events.append(("register", body))
        key = body.get("node_key") or f"{body['ip']}:{body['port']}"
        sid = self.by_key.get(key)
        if sid is None:
            self.counter += 1
            sid = f"GPU-{self.counter:03d}"
            self.by_key[key] = sid
        token = secrets.token_urlsafe(16)
        self.servers[sid] = {"server_id": sid, "ip": body["ip"], "port": body["port"], "token": token,
                             "status": "healthy"}
        return web.json_response({"success": True, "message": f"服务器 {sid} 注册成功", "server_id": sid,
                                  "ip": body["ip"], "port": body["port"], "node_token": token})

    async def unregister(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("secret") != self.secret:
            return web.json_response({"error": "invalid secret"}, status=401)
        self.events.append(("unregister", body))
        server = self.servers.get(body.get("server_id", ""))
        if server is None:
            return web.json_response({"error": "unknown server"}, status=404)
        server["status"] = "offline"  # as the gateway does: offline, not forgotten (DESIGN §9)
        return web.json_response({"success": True, "message": "注销成功"})

    async def list_servers(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Webhook-Secret") != self.secret:
            return web.json_response({"error": "invalid secret"}, status=401)
        servers = [{k: v for k, v in s.items() if k != "token"} for s in self.servers.values()]
        return web.json_response({"success": True, "data": {"servers": servers}})

    async def myip(self, request: web.Request) -> web.Response:
        return web.Response(text=self.ip + "\n")

    def token_of(self, server_id: str) -> str:
        return str(self.servers[server_id]["token"])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhook/register", self.register)
        app.router.add_post("/webhook/unregister", self.unregister)
        app.router.add_get("/webhook/servers", self.list_servers)
        app.router.add_get("/myip", self.myip)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        self.sock.close()


def mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def tiny_model(path: Path, *, fixed: int | None = None, multiple: int = 1) -> None:
    """A x2 nearest-neighbour 'model'; ``multiple`` > 1 adds a SpaceToDepth that needs it."""
    dims = [1, 3, fixed, fixed] if fixed else ["N", 3, "H", "W"]
    nodes = []
    src = "input"
    if multiple > 1:
        nodes += [helper.make_node("SpaceToDepth", ["input"], ["s2d"], blocksize=multiple),
                  helper.make_node("DepthToSpace", ["s2d"], ["d2s"], blocksize=multiple, mode="DCR")]
        src = "d2s"
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    nodes.append(helper.make_node("Resize", [src, "", "scales"], ["output"], mode="nearest"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              initializer=[scales])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@asynccontextmanager
async def real_gateway(tmp_path: Path, secret: str) -> AsyncIterator[str]:
    """The real photogate gateway (``--dev``, health checks every 0.2 s) in this process on
    an ephemeral port; yields its URL."""
    from photogate.app import create_app
    from photogate.config import load_config

    config = load_config(None, overrides={
        "webhook.secret": secret, "storage.data_dir": str(tmp_path / "gw"), "health_check.interval": 0.2,
    }, env={}, dev=True)
    sock = free_socket()
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()
