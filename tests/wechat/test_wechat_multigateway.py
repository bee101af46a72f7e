"""WeChat across two gateways on one Redis (issue 8): a session from one works on the other,
an order made on one is paid by a notification delivered to the other, credited once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import Gateway
from wechat_fake import FakeWechat
from wechat_support import bearer, create_order, login, notify_url, user, wechat_config

from photogate.app import create_app


async def test_order_on_one_gateway_paid_through_the_other_credited_once(
        aiohttp_client: Any, tmp_path: Path, fake_wechat: FakeWechat, redis_config: dict[str, Any]) -> None:
    a, b = [Gateway(await aiohttp_client(create_app(wechat_config(tmp_path, fake_wechat, **redis_config))))
            for _ in range(2)]
    token, _ = await login(a, "mia")
    assert (await user(b, token))["credits"] == 0  # the session works on B
    no = (await create_order(a, token))["out_trade_no"]
    fake_wechat.pay(no)
    notification = fake_wechat.notification(fake_wechat.transaction(no))
    for gw in (b, a, b):  # WeChat retries; each gateway may get a copy
        status, text = await fake_wechat.post(notify_url(gw), *notification)
        assert status == 204, text
    for gw in (a, b):
        me = await user(gw, token)
        assert me["credits"] == 10 and [o["state"] for o in me["orders"]] == ["paid"]
    resp = await b.client.get("/api/wechat/user", headers=bearer("not-a-session"))
    assert resp.status == 401
