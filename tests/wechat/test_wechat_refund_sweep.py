"""Issue 14, item 10: refunds left ``refunding`` are queried by the reconcile sweep and settled
as their notification would settle them — SUCCESS through the one ``REFUND.SUCCESS`` path,
CLOSED undone (paid again, credits back), ABNORMAL left for the operator — on both backends."""

from __future__ import annotations

import time
from typing import Any

import structlog
from support import ADMIN_TOKEN, Gateway
from wechat_fake import FakeWechat
from wechat_support import buy, login, user

from photogate.wechat.service import WECHAT

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NONE = {"paid": 0, "closed": 0, "pending": 0, "errors": 0, "refunded": 0, "refund_closed": 0, "refund_pending": 0}


async def _refund(gateway: Gateway, fake: FakeWechat, no: str) -> str:
    """An admin refund that WeChat answers PROCESSING; return its out_refund_no."""
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no}, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["order"]["state"] == "refunding" and body["refund_status"] == "PROCESSING"
    return str(body["order"]["out_refund_no"])


def _states(me: dict[str, Any]) -> dict[str, str]:
    return {o["out_trade_no"]: o["state"] for o in me["orders"]}


async def test_sweep_settles_refunds_whose_notification_never_came(wx_gateway: Gateway,
                                                                   fake_wechat: FakeWechat) -> None:
    gateway, fake = wx_gateway, fake_wechat
    service = gateway.app[WECHAT]
    token, _ = await login(gateway, "nina")
    done, closed, stuck, lost, waiting = [await buy(gateway, fake, token) for _ in range(5)]
    assert (await user(gateway, token))["credits"] == 50
    fake.refund_status = "PROCESSING"
    refunds = {no: await _refund(gateway, fake, no) for no in (done, closed, stuck, waiting)}
    assert all(r["notify_url"] for r in fake.refunds)
    # The admin's request for `lost` never reached WeChat: begun here, unknown there.
    assert await service.records.begin_refund(lost, "RFLOST0001", False) == "ok"
    assert (await user(gateway, token))["credits"] == 0  # an admin refund takes the credits at once

    # WeChat finishes three of them; their notifications are lost (nothing is delivered).
    fake.refund_records[refunds[done]]["status"] = "SUCCESS"
    fake.refund_records[refunds[closed]]["status"] = "CLOSED"
    fake.refund_records[refunds[stuck]]["status"] = "ABNORMAL"

    assert await service.reconcile() == NONE  # too young: a request may still be on its way
    assert not [p for p in fake.pay_requests if p[1].startswith("/v3/refund/domestic/refunds/")]

    later = time.time() + service.cfg.order_ttl + 1
    with structlog.testing.capture_logs() as logs:
        counts = await service.reconcile(now=later)
    assert counts == {**NONE, "refunded": 1, "refund_closed": 2, "refund_pending": 2}
    queried = sorted(p[1] for p in fake.pay_requests if p[1].startswith("/v3/refund/domestic/refunds/"))
    assert queried == sorted(f"/v3/refund/domestic/refunds/{r}" for r in [*refunds.values(), "RFLOST0001"])
    assert fake.auth_failures == []
    me = await user(gateway, token)
    assert _states(me) == {done: "refunded", closed: "paid", stuck: "refunding", lost: "paid", waiting: "refunding"}
    assert me["credits"] == 20  # the closed and the lost refund gave their credits back; nothing else moved
    by_no = {o["out_trade_no"]: o for o in me["orders"]}
    assert by_no[done]["refund_id"] == fake.refund_records[refunds[done]]["refund_id"]
    assert by_no[closed]["out_refund_no"] is None  # an admin may refund it again
    events = [(e["event"], e.get("out_trade_no")) for e in logs]
    assert ("wechatpay_refund_succeeded", done) in events  # the REFUND.SUCCESS path, not a copy of it
    assert ("wechatpay_refund_abnormal", stuck) in events
    assert [e for e in logs if e["event"] == "wechatpay_refund_abnormal"][0]["log_level"] == "error"

    # Settled ones are not asked again; the pending two are, until they settle.
    before = len(fake.pay_requests)
    assert await service.reconcile(now=later) == {**NONE, "refund_pending": 2}
    assert len(fake.pay_requests) - before == 2
    fake.refund_records[refunds[waiting]]["status"] = "SUCCESS"
    assert await service.reconcile(now=later) == {**NONE, "refunded": 1, "refund_pending": 1}
    me = await user(gateway, token)
    assert _states(me)[waiting] == "refunded" and me["credits"] == 20

    # A late notification for a refund the sweep settled changes nothing.
    fake.notify_base = str(gateway.client.make_url("/"))
    assert await fake.finish_refund(refunds[done]) == 204
    assert (await user(gateway, token))["credits"] == 20


async def test_refund_closed_notification_undoes_our_refund(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway, fake = wx_gateway, fake_wechat
    token, _ = await login(gateway, "omar")
    no = await buy(gateway, fake, token)
    fake.refund_status = "PROCESSING"
    out_refund_no = await _refund(gateway, fake, no)
    assert (await user(gateway, token))["credits"] == 0
    fake.notify_base = str(gateway.client.make_url("/"))
    assert await fake.finish_refund(out_refund_no, "CLOSED") == 204
    me = await user(gateway, token)
    assert _states(me) == {no: "paid"} and me["credits"] == 10
    # It can be refunded again, under a new out_refund_no.
    fake.refund_status = "SUCCESS"
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no}, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200 and body["order"]["state"] == "refunded", body
    assert body["order"]["out_refund_no"] not in (None, out_refund_no)
    assert (await user(gateway, token))["credits"] == 0


async def test_refund_busy_answer_keeps_the_refund_pending(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    """A 5xx SYSTEM_ERROR decides nothing: the refund stays ``refunding`` and a retry reuses its number."""
    gateway, fake = wx_gateway, fake_wechat
    token, _ = await login(gateway, "pia")
    no = await buy(gateway, fake, token)
    fake.outage = 500
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no}, headers=ADMIN)
    assert resp.status == 503 and "retry the same request" in (await resp.json())["error"]
    me = await user(gateway, token)
    assert _states(me) == {no: "refunding"} and me["credits"] == 0
    first = me["orders"][0]["out_refund_no"]
    fake.outage = 0
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no}, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200 and body["order"]["state"] == "refunded", body
    assert [r["out_refund_no"] for r in fake.refunds] == [first]
