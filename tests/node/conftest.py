"""gpunode fixtures: the bundled model loaded once, real node servers, a fake gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers.ports import free_socket
from node_support import FakeGateway

from gpunode.app import create_app
from gpunode.config import NodeConfig, bundled_model_path
from gpunode.model import SRModel


@pytest.fixture(scope="session")
def sr_model() -> SRModel:
    """The bundled model, loaded once for the whole run."""
    return SRModel(bundled_model_path(), cpu_only=True)


@dataclass
class RunningNode:
    app: web.Application
    runner: web.AppRunner
    config: NodeConfig

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    stopped: bool = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


@pytest.fixture
async def start_node(tmp_path: Path, sr_model: SRModel,
                     fake_gateway: FakeGateway) -> AsyncIterator[Callable[..., Awaitable[RunningNode]]]:
    """Start a real gpunode app on an ephemeral port: ``await start_node(token="t", ...)``.

    Depends on ``fake_gateway`` so that nodes stop (and unregister) before it goes away."""
    started: list[RunningNode] = []

    async def start(*, ip_source: Any = None, models: list[Any] | None = None, **overrides: Any) -> RunningNode:
        sock = free_socket()
        port = sock.getsockname()[1]
        config = replace(NodeConfig(host="127.0.0.1", state_dir=tmp_path / f"state-{port}",
                                    register_backoff_initial=0.05, register_backoff_max=0.2), port=port,
                         **overrides)
        app = create_app(config, models=models or [sr_model], ip_source=ip_source)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        node = RunningNode(app, runner, config)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake_gateway() -> AsyncIterator[FakeGateway]:
    """A fake gateway whose port is reserved but not listening until ``await gw.start()``."""
    gw = FakeGateway()
    yield gw
    await gw.stop()


