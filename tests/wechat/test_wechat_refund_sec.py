"""Issue 13, item 13: a signed ``REFUND.SUCCESS`` for a paid order takes back the credits it
granted — what remains when some were spent, the shortfall recorded and audited — once,
however often WeChat repeats it; on both backends. And 14(c): the public config shows no
WeChat key file."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import FormData
from support import Gateway, image_bytes
from wechat_fake import MCHID, FakeWechat
from wechat_support import bearer, buy, login, notify_url, user, wait_task


def _refund(fake: FakeWechat, no: str, refund_id: str) -> dict[str, Any]:
    """A refund made in the merchant console, as WeChat reports it."""
    return {"mchid": MCHID, "out_trade_no": no, "transaction_id": fake.orders[no]["transaction_id"],
            "out_refund_no": "CONSOLE-" + refund_id, "refund_id": refund_id, "refund_status": "SUCCESS",
            "amount": {"total": 100, "refund": 100, "payer_total": 100, "payer_refund": 100}}


async def _notify_refund(gateway: Gateway, fake: FakeWechat, no: str, refund_id: str) -> None:
    status, text = await fake.post(notify_url(gateway), *fake.notification(_refund(fake, no, refund_id),
                                                                           event_type="REFUND.SUCCESS"))
    assert status == 204, text


async def _spend(gateway: Gateway, token: str) -> None:
    form = FormData()
    form.add_field("file", image_bytes(40, 30), filename="photo.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance", data=form, headers=bearer(token))
    body = await resp.json()
    assert resp.status == 200, body
    assert (await wait_task(gateway, token, body["task_id"]))["status"] == "completed"


def _taken_back(logs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["out_trade_no"], e["granted"], e["taken"], e["shortfall"]) for e in logs
            if e.get("action") == "wechat_refund_credits_taken_back"]


async def test_console_refund_takes_the_credits_back_once(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway, fake = wx_gateway, fake_wechat
    token, _ = await login(gateway, "rita")
    no = await buy(gateway, fake, token)
    assert (await user(gateway, token))["credits"] == 10
    with structlog.testing.capture_logs() as logs:
        await _notify_refund(gateway, fake, no, "50300000001")
        me = await user(gateway, token)
        assert me["credits"] == 0 and [(o["out_trade_no"], o["state"]) for o in me["orders"]] == [(no, "refunded")]
        assert me["orders"][0]["refund_id"] == "50300000001"
        # WeChat repeats a notification until it hears 204: nothing is taken twice, even from a new pack.
        no2 = await buy(gateway, fake, token)
        for _ in range(2):
            await _notify_refund(gateway, fake, no, "50300000001")
        assert (await user(gateway, token))["credits"] == 10
    assert _taken_back(logs) == [(no, 10, 10, 0)]
    # A refund notification cannot pay an order back either: the refunded pack stays refunded.
    status, _ = await fake.post(notify_url(gateway), *fake.notification(fake.transaction(no)))
    assert status == 204
    me = await user(gateway, token)
    assert me["credits"] == 10 and {o["out_trade_no"]: o["state"] for o in me["orders"]} == {no: "refunded",
                                                                                              no2: "paid"}


async def test_refund_after_spending_takes_what_remains_and_records_the_shortfall(  # type: ignore[no-untyped-def]
        wx_gateway: Gateway, fake_wechat: FakeWechat, nodes) -> None:
    gateway, fake = wx_gateway, fake_wechat
    await gateway.register(await nodes())
    token, openid = await login(gateway, "sam")
    no = await buy(gateway, fake, token)
    for _ in range(3):
        await _spend(gateway, token)
    assert (await user(gateway, token))["credits"] == 7
    with structlog.testing.capture_logs() as logs:
        await _notify_refund(gateway, fake, no, "50300000002")
        await _notify_refund(gateway, fake, no, "50300000002")
    assert (await user(gateway, token))["credits"] == 0
    assert _taken_back(logs) == [(no, 10, 7, 3)]
    audit = next(e for e in logs if e.get("action") == "wechat_refund_credits_taken_back")
    assert audit["openid"] == openid and audit["refund_id"] == "50300000002"


async def test_public_config_shows_no_wechat_key_files(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    text = await (await wx_gateway.client.get("/api/v1/config")).text()
    keys = fake_wechat.keys
    for path in (keys.merchant_path, keys.pay_public_path, keys.platform_cert_path):
        assert str(path) not in text and path.name not in text
    for word in ("merchant_private_key", "pay_public_key", "platform_certs", "mchid", "notify_url"):
        assert word not in text
