"""WeChat fixtures: keys generated once per session, a fake WeChat server, gateways wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support import Gateway
from wechat_fake import FakeWechat, WxKeys, make_keys
from wechat_support import wechat_config

from photogate.app import create_app


@pytest.fixture(scope="session")
def wx_keys(tmp_path_factory: pytest.TempPathFactory) -> WxKeys:
    return make_keys(tmp_path_factory.mktemp("wechat-keys"))


@pytest.fixture
async def fake_wechat(wx_keys: WxKeys) -> AsyncIterator[FakeWechat]:
    fake = FakeWechat(wx_keys)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(params=["sqlite", "redis"])
def wx_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every WeChat flow runs on both backends (issue 8): the same contract."""
    return {} if request.param == "sqlite" else dict(request.getfixturevalue("redis_config"))


@pytest.fixture
async def make_wx_gateway(aiohttp_client: Any, tmp_path: Path, fake_wechat: FakeWechat,
                          wx_backend: dict[str, Any]) -> Callable[..., Awaitable[Gateway]]:
    async def make(**overrides: Any) -> Gateway:
        settings = {**wx_backend, **overrides}
        return Gateway(await aiohttp_client(create_app(wechat_config(tmp_path, fake_wechat, **settings))))

    return make


@pytest.fixture
async def wx_gateway(make_wx_gateway: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await make_wx_gateway()
