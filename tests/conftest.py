"""Fixtures: a real gateway on an ephemeral port, fake GPU nodes, a gateway process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import ci_skips
import pytest
import structlog
from redis_support import RedisServer, unique_prefix
from support import FakeNode, Gateway, GatewayProcess, make_config, node_factory, refused_port

from photogate.app import create_app
from photogate.config import Config


def pytest_configure(config: pytest.Config) -> None:
    # Skips summarised; under CI=true one not in tests/ci_allowed_skips.txt fails the run.
    ci_skips.register(config)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that runs a CLI ``main()`` configures structlog; undo it for the next test."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def gateway(aiohttp_client: Any, config: Config) -> Gateway:
    return Gateway(await aiohttp_client(create_app(config)))


@pytest.fixture
async def make_gateway(aiohttp_client: Any, tmp_path: Path) -> Callable[..., Awaitable[Gateway]]:
    async def make(**overrides: Any) -> Gateway:
        return Gateway(await aiohttp_client(create_app(make_config(tmp_path, **overrides))))

    return make


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Awaitable[FakeNode]]]:
    async with node_factory(FakeNode) as make:
        yield make


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (held, never listening)."""
    with refused_port() as port:
        yield port


@pytest.fixture
def gateway_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    procs: list[GatewayProcess] = []

    def make(config_text: str = "") -> GatewayProcess:
        proc = GatewayProcess(tmp_path, config_text)
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; each test keeps to its own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_config(redis_server: RedisServer) -> dict[str, Any]:
    """Overrides that put a gateway on the session's Redis, under a prefix of its own."""
    return {"storage.backend": "redis", "storage.redis_url": redis_server.url,
            "storage.redis_prefix": unique_prefix(), "storage.redis_lease_ttl": 1.0}


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config overrides for the backend under test: a test taking it runs on both stores."""
    if request.param == "sqlite":
        return {}
    return dict(request.getfixturevalue("redis_config"))


@pytest.fixture
async def start_gateway(aiohttp_client: Any, tmp_path: Path,
                        backend: dict[str, Any]) -> Callable[..., Awaitable[Gateway]]:
    """A gateway on this test's store (``backend``); a second call after closing the first
    is a restart on the same data."""
    async def start(**overrides: Any) -> Gateway:
        return Gateway(await aiohttp_client(create_app(make_config(tmp_path, **{**backend, **overrides}))))

    return start
