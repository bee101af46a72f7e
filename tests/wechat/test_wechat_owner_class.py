"""Owners and priority classes of WeChat uploads (issue 18): the openid owns the task; a user
with credits goes in ``access.wechat_paid_class``, one without in ``access.default_class``; an
API key works beside WeChat login, and ``access.require_key`` still admits WeChat sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from support import ADMIN_TOKEN, Gateway, image_bytes
from wechat_fake import FakeWechat
from wechat_support import bearer, buy, login, wait_task

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _enhance(gateway: Gateway, headers: dict[str, str]) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", image_bytes(), filename="p.png", content_type="image/png")
    return await gateway.client.post("/api/v1/enhance", data=form, headers=headers)


async def _whose(gateway: Gateway, task_id: str) -> tuple[str, str]:
    resp = await gateway.client.get(f"/api/v1/admin/tasks/{task_id}", headers=ADMIN)
    task = (await resp.json())["task"]
    return task["owner"], task["class"]


async def test_a_user_without_credits_is_free_and_passes_require_key(
        make_wx_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gateway = await make_wx_gateway(**{"wechat.billing_enabled": False, "access.require_key": True})
    await gateway.register(await nodes())
    token, openid = await login(gateway, "bob")
    resp = await _enhance(gateway, bearer(token))  # require_key: a WeChat session still passes
    assert resp.status == 200, await resp.text()
    task_id = (await resp.json())["task_id"]
    assert await _whose(gateway, task_id) == (openid, "free")
    await wait_task(gateway, token, task_id)


async def test_a_user_with_credits_is_paid(wx_gateway: Gateway, fake_wechat: FakeWechat, nodes: Any) -> None:
    gateway = wx_gateway
    await gateway.register(await nodes())
    token, openid = await login(gateway, "dave")
    await buy(gateway, fake_wechat, token)
    resp = await _enhance(gateway, bearer(token))
    assert resp.status == 200, await resp.text()
    task_id = (await resp.json())["task_id"]
    assert await _whose(gateway, task_id) == (openid, "paid")
    await wait_task(gateway, token, task_id)


async def test_an_api_key_works_beside_wechat_login(wx_gateway: Gateway, nodes: Any) -> None:
    gateway = wx_gateway
    await gateway.register(await nodes())
    resp = await gateway.client.post("/api/v1/admin/keys", json={"name": "shop", "class": "paid"}, headers=ADMIN)
    made = await resp.json()
    resp = await _enhance(gateway, bearer(made["key"]))  # billing on: a key is not charged credits
    assert resp.status == 200, await resp.text()
    task_id = (await resp.json())["task_id"]
    assert await _whose(gateway, task_id) == (f"key:{made['id']}", "paid")
    token, _ = await login(gateway, "carol")
    # A WeChat user does not see the key's task, nor the key the user's.
    assert (await gateway.client.get(f"/api/v1/status/{task_id}", headers=bearer(token))).status == 404
    await wait_task(gateway, made["key"], task_id)
