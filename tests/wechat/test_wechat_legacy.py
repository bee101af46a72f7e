"""Issue 15, item 3: the original mini program's WeChat calls, on both backends.

Written from the issue's description of that mini program: it reads ``{success, data: {...}}``;
login gives ``data.openid``; ``pay/create`` sends ``{openid, total_fee, body, attach}`` and reads
``data.out_trade_no`` and ``data.pay_params``; ``pay/query`` reads ``data.trade_state``;
``pay/orders`` reads ``data`` as a list; ``pay/stats`` exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support import Gateway
from wechat_fake import APPID, FakeWechat, rsa_verify
from wechat_support import bearer, login, notify_url, wechat_config

from photogate.config import ConfigError

LEGACY = {"wechat.legacy_clients": True}
PAY_PARAMS = ("timeStamp", "nonceStr", "package", "signType", "paySign")


async def _ok(resp: Any) -> dict[str, Any]:
    text = await resp.text()
    assert "session_key" not in text
    body = await resp.json()
    assert resp.status == 200, body
    assert body["success"] is True and "data" in body, body
    return body


async def _refused(resp: Any, status: int) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is False and body["message"] == body["error"], body
    return body


async def _pay(gateway: Gateway, fake: FakeWechat, no: str) -> None:
    fake.pay(no)
    status, text = await fake.post(notify_url(gateway), *fake.notification(fake.transaction(no)))
    assert status == 204, text


async def test_every_answer_carries_the_envelope(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway, fake, client = wx_gateway, fake_wechat, wx_gateway.client
    body = await _ok(await client.post("/api/wechat/login", json={"code": "ok-alice"}))
    assert body["data"]["openid"] == "oalice" and body["openid"] == "oalice"
    token = body["token"]
    products = (await _ok(await client.get("/api/wechat/pay/products")))["data"]
    assert {p["product"]: p["price_fen"] for p in products} == {"credits10": 100, "credits50": 400}

    created = await _ok(await client.post("/api/wechat/pay/create", json={"product": "credits10"},
                                          headers=bearer(token)))
    data = created["data"]
    no = data["out_trade_no"]
    assert no == created["out_trade_no"] and data["total_fee"] == 100
    params = data["pay_params"]
    assert all(isinstance(params[k], str) and params[k] for k in PAY_PARAMS), params
    assert params["package"] == f"prepay_id={fake.orders[no]['prepay_id']}" and params["signType"] == "RSA"
    message = f"{APPID}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n".encode()
    assert rsa_verify(fake.keys.merchant.public_key(), message, params["paySign"])

    query = f"/api/wechat/pay/query/{no}"
    assert (await _ok(await client.get(query, headers=bearer(token))))["data"]["trade_state"] == "NOTPAY"
    await _pay(gateway, fake, no)
    paid = await _ok(await client.get(query, headers=bearer(token)))
    assert paid["data"]["trade_state"] == "SUCCESS" and paid["order"]["state"] == "paid"

    orders = (await _ok(await client.get("/api/wechat/pay/orders/oalice", headers=bearer(token))))["data"]
    assert [(o["out_trade_no"], o["trade_state"]) for o in orders] == [(no, "SUCCESS")]
    stats = (await _ok(await client.get("/api/wechat/pay/stats", headers=bearer(token))))["data"]
    assert (stats["credits"], stats["paid_orders"], stats["total_paid_fen"]) == (10, 1, 100)
    assert (await _ok(await client.get("/api/wechat/user", headers=bearer(token))))["data"]["credits"] == 10
    # Errors carry success: false and message (what the mini program shows).
    await _refused(await client.get("/api/wechat/pay/query/PGnope", headers=bearer(token)), 404)


async def test_original_openid_calls_with_legacy_clients_on(
        make_wx_gateway: Callable[..., Awaitable[Gateway]], fake_wechat: FakeWechat) -> None:
    gateway, fake = await make_wx_gateway(**LEGACY), fake_wechat
    client = gateway.client
    openid = (await _ok(await client.post("/api/wechat/login", json={"code": "ok-alice"})))["data"]["openid"]

    # The original's create: no session token, the openid and a price; body is ours to set.
    created = await _ok(await client.post("/api/wechat/pay/create", json={
        "openid": openid, "total_fee": 400, "body": "一块钱买五十次", "attach": "from-mini-program"}))
    no = created["data"]["out_trade_no"]
    sent = fake.orders[no]
    assert sent["amount"] == {"total": 400, "currency": "CNY"} and sent["payer"] == {"openid": openid}
    assert sent["description"] == "照片增强 50 次" and sent["attach"] == "from-mini-program"
    assert created["data"]["product"] == "credits50" and created["data"]["credits"] == 50
    assert set(PAY_PARAMS) <= set(created["data"]["pay_params"])

    query = f"/api/wechat/pay/query/{no}?openid={openid}"
    assert (await _ok(await client.get(query)))["data"]["trade_state"] == "NOTPAY"
    await _pay(gateway, fake, no)
    assert (await _ok(await client.get(query)))["data"]["trade_state"] == "SUCCESS"
    orders = (await _ok(await client.get(f"/api/wechat/pay/orders/{openid}")))["data"]
    assert isinstance(orders, list) and [o["out_trade_no"] for o in orders] == [no]
    stats = (await _ok(await client.get(f"/api/wechat/pay/stats?openid={openid}")))["data"]
    assert (stats["credits"], stats["credits_bought"], stats["total_paid_fen"]) == (50, 50, 400)

    # Someone else's openid sees nothing of alice's order; a session still binds its own openid.
    await _refused(await client.get(f"/api/wechat/pay/query/{no}?openid=obob"), 404)
    bob = (await _ok(await client.post("/api/wechat/login", json={"code": "ok-bob"})))["token"]
    await _refused(await client.get(f"/api/wechat/pay/orders/{openid}", headers=bearer(bob)), 403)
    await _refused(await client.post("/api/wechat/pay/create", json={"openid": openid, "total_fee": 100},
                                     headers=bearer(bob)), 403)
    # No openid and no session: still a login hint.
    await _refused(await client.post("/api/wechat/pay/create", json={"total_fee": 100}), 401)


async def test_total_fee_must_be_a_products_price(
        make_wx_gateway: Callable[..., Awaitable[Gateway]], fake_wechat: FakeWechat) -> None:
    gateway = await make_wx_gateway(**LEGACY)
    client = gateway.client
    token, openid = await login(gateway, "alice")
    for call, headers in (({"openid": openid, "total_fee": 1}, {}), ({"total_fee": 1}, bearer(token)),
                          ({"openid": openid, "total_fee": "99"}, {}), ({"openid": openid, "total_fee": 1.0}, {})):
        body = await _refused(await client.post("/api/wechat/pay/create", json=call, headers=headers), 400)
        assert "credits10 (100 fen)" in body["message"] and "credits50 (400 fen)" in body["message"], body
    # A product and another product's price: refused, never the cheaper one's credits.
    body = await _refused(await client.post("/api/wechat/pay/create", json={
        "product": "credits50", "total_fee": 100}, headers=bearer(token)), 400)
    assert "credits10" in body["message"]
    assert fake_wechat.orders == {}  # nothing reached WeChat Pay


async def test_openid_calls_refused_with_legacy_clients_off(wx_gateway: Gateway) -> None:
    client = wx_gateway.client
    await login(wx_gateway, "alice")
    for resp in (await client.post("/api/wechat/pay/create", json={"openid": "oalice", "total_fee": 100}),
                 await client.get("/api/wechat/pay/query/PG1?openid=oalice"),
                 await client.get("/api/wechat/pay/orders/oalice"),
                 await client.get("/api/wechat/pay/stats?openid=oalice")):
        body = await _refused(resp, 401)
        assert "log in with WeChat" in body["message"]


def test_legacy_clients_config_is_checked(tmp_path: Path) -> None:
    from support import make_config

    with pytest.raises(ConfigError, match="wechat.appid: required"):
        make_config(tmp_path, **LEGACY)


async def test_legacy_clients_need_distinct_prices(tmp_path: Path, fake_wechat: FakeWechat) -> None:
    same = {"a": {"description": "A", "price_fen": 100, "credits": 10},
            "b": {"description": "B", "price_fen": 100, "credits": 20}}
    with pytest.raises(ConfigError, match="wechat.legacy_clients: each of wechat.products needs its own price_fen"):
        wechat_config(tmp_path, fake_wechat, **{**LEGACY, "wechat.products": same})
    wechat_config(tmp_path, fake_wechat, **{"wechat.products": same})  # fine while the switch is off
