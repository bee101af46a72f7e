"""Helpers for the WeChat tests: a gateway configured against the fake WeChat, users, purchases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import Gateway, make_config
from wechat_fake import (
    APIV3_KEY,
    APP_SECRET,
    APPID,
    MCHID,
    MERCHANT_SERIAL,
    PUB_KEY_ID,
    FakeWechat,
)

from photogate.config import Config

PRODUCTS = {
    "credits10": {"description": "照片增强 10 次", "price_fen": 100, "credits": 10},
    "credits50": {"description": "照片增强 50 次", "price_fen": 400, "credits": 50},
}


def wechat_config(tmp_path: Path, fake: FakeWechat, **overrides: Any) -> Config:
    keys = fake.keys
    settings: dict[str, Any] = {
        "wechat.appid": APPID, "wechat.secret": APP_SECRET, "wechat.login_enabled": True,
        "wechat.billing_enabled": True, "wechat.api_base": fake.url, "wechat.pay_base": fake.url,
        "wechat.mchid": MCHID, "wechat.merchant_serial": MERCHANT_SERIAL,
        "wechat.merchant_private_key": str(keys.merchant_path), "wechat.apiv3_key": APIV3_KEY,
        "wechat.pay_public_key": str(keys.pay_public_path), "wechat.pay_public_key_id": PUB_KEY_ID,
        "wechat.platform_certs": [str(keys.platform_cert_path)],
        "wechat.notify_url": "https://photo.example.com/api/wechat/pay/notify", "wechat.products": PRODUCTS,
        "wechat.timeout": 5.0,
    }
    settings.update(overrides)
    return make_config(tmp_path, **settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(gateway: Gateway, name: str) -> tuple[str, str]:
    """Log ``name`` in through the mini-program path; return (token, openid)."""
    resp = await gateway.client.post("/api/wechat/auth/openid", json={"code": f"ok-{name}"})
    body = await resp.json()
    assert resp.status == 200, body
    return body["token"], body["openid"]


async def create_order(gateway: Gateway, token: str, product: str = "credits10") -> dict[str, Any]:
    resp = await gateway.client.post("/api/wechat/pay/create", json={"product": product}, headers=bearer(token))
    body = await resp.json()
    assert resp.status == 200, body
    return body


def notify_url(gateway: Gateway) -> str:
    return str(gateway.client.make_url("/api/wechat/pay/notify"))


async def buy(gateway: Gateway, fake: FakeWechat, token: str, product: str = "credits10") -> str:
    """Order, pay in the fake WeChat, deliver its notification; return the out_trade_no."""
    no = (await create_order(gateway, token, product))["out_trade_no"]
    fake.pay(no)
    status, text = await fake.post(notify_url(gateway), *fake.notification(fake.transaction(no)))
    assert status == 204, text
    return no


async def user(gateway: Gateway, token: str) -> dict[str, Any]:
    resp = await gateway.client.get("/api/wechat/user", headers=bearer(token))
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def wait_task(gateway: Gateway, token: str | None, task_id: str) -> dict[str, Any]:
    """Poll the task (as its owner) until it completes or fails; tests never end with work in flight."""
    from support import wait_until

    final: dict[str, Any] = {}

    async def done() -> bool:
        resp = await gateway.client.get(f"/api/v1/status/{task_id}", headers=bearer(token) if token else {})
        final.update(await resp.json())
        return final.get("status") in ("completed", "failed")

    await wait_until(done, 15, f"task {task_id} to finish")
    return final
