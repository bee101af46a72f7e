"""The gateway under test: its config (``make_config``) and a handle on a running one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from photogate.config import Config, load_config

from . import public_api
from .fake_node import FakeNode
from .public_api import SECRET

ADMIN_TOKEN = "test-admin-token-0123456789"
REPO = Path(__file__).resolve().parents[2]
#: Where the tests' nodes live (``webhook.allowed_node_networks`` of every test gateway).
LOOPBACK_NODES = ("127.0.0.0/8", "::1/128")


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

    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.client = client

    @property
    def app(self) -> web.Application:
        server = self.client.server
        assert isinstance(server, TestServer)
        return server.app

    async def register(self, node: FakeNode, **extra: Any) -> dict[str, Any]:
        body = await public_api.register(self.client, "", node.port, **extra)
        node.token, node.server_id = body["node_token"], body["server_id"]
        return body

    async def submit(self, data: bytes | None = None, **fields: str) -> str:
        body = await public_api.upload(self.client, "", data, **fields)
        assert body["status"] == "queued"
        return str(body["task_id"])

    async def status(self, task_id: str) -> dict[str, Any]:
        return await public_api.status(self.client, "", task_id)

    async def wait_done(self, task_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return (await public_api.wait_finished(self.client, "", [task_id], timeout))[task_id]

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
