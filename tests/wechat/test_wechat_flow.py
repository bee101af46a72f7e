"""WeChat end to end through the gateway: login, pay, notify, credits, enhance, visibility, refunds."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from support import ADMIN_TOKEN, Gateway, image_bytes
from wechat_fake import (
    APIV3_KEY,
    APP_SECRET,
    APPID,
    SESSION_KEY,
    FakeWechat,
    rsa_verify,
)
from wechat_support import bearer, buy, create_order, login, notify_url, user, wait_task

from photogate.wechat import WECHAT


async def _enhance(gateway: Gateway, token: str | None) -> Any:
    from aiohttp import FormData

    form = FormData()
    form.add_field("file", image_bytes(40, 30), filename="photo.png", content_type="image/png")
    return await gateway.client.post("/api/v1/enhance", data=form, headers=bearer(token) if token else {})


async def test_login_order_notify_credits_enhance(wx_gateway: Gateway, fake_wechat: FakeWechat, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway, fake = wx_gateway, fake_wechat
    await gateway.register(await nodes())
    token, openid = await login(gateway, "alice")
    assert openid == "oalice"

    resp = await _enhance(gateway, None)
    assert resp.status == 401 and "log in with WeChat" in (await resp.json())["error"]
    resp = await _enhance(gateway, token)
    assert resp.status == 402 and "not enough credits" in (await resp.json())["error"]

    # The client names a product; a price it sends is ignored.
    resp = await gateway.client.post("/api/wechat/pay/create", json={"product": "credits10", "price_fen": 1},
                                     headers=bearer(token))
    order = await resp.json()
    assert resp.status == 200, order
    no = order["out_trade_no"]
    sent = fake.orders[no]
    assert sent["amount"] == {"total": 100, "currency": "CNY"} and sent["payer"] == {"openid": "oalice"}
    assert sent["notify_url"] == "https://photo.example.com/api/wechat/pay/notify"
    payment = order["payment"]
    assert payment["package"] == f"prepay_id={sent['prepay_id']}" and payment["signType"] == "RSA"
    message = f"{APPID}\n{payment['timeStamp']}\n{payment['nonceStr']}\n{payment['package']}\n".encode()
    assert rsa_verify(fake.keys.merchant.public_key(), message, payment["paySign"])
    assert fake.auth_failures == []

    fake.pay(no)
    status, text = await fake.post(notify_url(gateway), *fake.notification(fake.transaction(no)))
    assert status == 204, text
    me = await user(gateway, token)
    assert me["credits"] == 10
    assert [(o["out_trade_no"], o["state"], o["amount"]) for o in me["orders"]] == [(no, "paid", 100)]

    resp = await _enhance(gateway, token)
    assert resp.status == 200
    task_id = (await resp.json())["task_id"]
    assert (await user(gateway, token))["credits"] == 9
    final: dict[str, Any] = {}

    async def done() -> bool:
        r = await gateway.client.get(f"/api/v1/status/{task_id}", headers=bearer(token))
        final.update(await r.json())
        return final["status"] in ("completed", "failed")

    from support import wait_until

    await wait_until(done, 15, "the paid task to finish")
    assert final["status"] == "completed"
    resp = await gateway.client.get(f"/api/v1/download/{task_id}", headers=bearer(token))
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    me = await user(gateway, token)
    assert me["credits"] == 9
    assert [(t["task_id"], t["status"]) for t in me["tasks"]] == [(task_id, "completed")]


async def test_bad_notifications_rejected_and_credited_once(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway, fake = wx_gateway, fake_wechat
    token, _ = await login(gateway, "bob")
    no = (await create_order(gateway, token))["out_trade_no"]
    fake.pay(no)
    url = notify_url(gateway)
    good = fake.transaction(no)

    headers, body = fake.notification(good)
    tampered = body.replace(b'"summary": "', b'"summary": "x')
    assert tampered != body
    probe_headers = {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]}
    bad = {
        "probe": (probe_headers, body),
        "stale timestamp": fake.notification(good, timestamp=int(time.time()) - 301),
        "tampered body": (headers, tampered),
        "forged signature": fake.notification(good, mode="forged"),
        "wrong amount": fake.notification(fake.transaction(no, amount={"total": 1, "currency": "CNY"})),
        "wrong appid": fake.notification(fake.transaction(no, appid="wx-someone-else")),
        "wrong mchid": fake.notification(fake.transaction(no, mchid="1999999999")),
        "unknown order": fake.notification(fake.transaction(no, out_trade_no="PG-not-ours")),
    }
    with structlog.testing.capture_logs() as logs:
        for what, (h, b) in bad.items():
            status, text = await fake.post(url, h, b)
            assert status == 400, what
            assert json.loads(text)["code"] == "FAIL", what
    probe_events = [e for e in logs if e["event"] == "wechatpay_signature_probe"]
    assert len(probe_events) == 1 and probe_events[0]["log_level"] == "info"  # no alarm for WeChat's probe
    assert (await user(gateway, token))["credits"] == 0

    # The same good notification five times at once, signed either way: credited once, all acknowledged.
    deliveries = [fake.notification(good, mode=mode) for mode in ("pubkey", "cert", "pubkey", "cert", "pubkey")]
    results = await asyncio.gather(*(fake.post(url, h, b) for h, b in deliveries))
    assert [status for status, _ in results] == [204] * 5
    assert (await user(gateway, token))["credits"] == 10
    status, _ = await fake.post(url, *fake.notification(good))  # a retry a day later
    assert status == 204
    me = await user(gateway, token)
    assert me["credits"] == 10 and me["orders"][0]["state"] == "paid"


async def test_no_secret_in_any_response_or_log(wx_gateway: Gateway, fake_wechat: FakeWechat, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway, fake = wx_gateway, fake_wechat
    await gateway.register(await nodes())
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        resp = await gateway.client.post("/api/wechat/login", json={"code": "ok-carol"})
        texts.append(await resp.text())
        token = json.loads(texts[-1])["token"]
        for code in ("used", "busy", "blocked"):
            resp = await gateway.client.post("/api/wechat/login", json={"code": code})
            texts.append(await resp.text())
        no = await buy(gateway, fake, token)
        for path in ("/api/wechat/user", f"/api/wechat/pay/query/{no}", "/api/wechat/pay/orders/ocarol",
                     "/api/v1/config", "/api/wechat/pay/products"):
            resp = await gateway.client.get(path, headers=bearer(token))
            assert resp.status == 200, path
            texts.append(await resp.text())
        texts.append(await (await _enhance(gateway, token)).text())
        await wait_task(gateway, token, json.loads(texts[-1])["task_id"])
        await gateway.app[WECHAT].api.call("/wxa/msg_sec_check", {"content": "hello"})
        fake.sign_mode = "forged"
        resp = await gateway.client.post("/api/wechat/pay/create", json={"product": "credits10"}, headers=bearer(token))
        assert resp.status == 503
        texts.append(await resp.text())
    merchant_pem = fake.keys.merchant_path.read_text()
    key_body = "".join(merchant_pem.splitlines()[1:-1])
    access_tokens = [t for t in fake.sec_check_tokens if t]
    assert access_tokens
    secrets_ = [APP_SECRET, APIV3_KEY, SESSION_KEY, key_body[40:80], *access_tokens,
                base64.b64encode(APIV3_KEY.encode()).decode()]
    log_text = "\n".join(repr(entry) for entry in logs)
    assert "wechat_login" in log_text and "wechatpay_order_paid" in log_text  # the logs were captured
    for secret in secrets_:
        assert secret not in log_text
        for text in texts:
            assert secret not in text
    assert token not in log_text  # the session token is a credential too
    assert "session_key" not in "".join(texts)
    assert set(json.loads(texts[7])["wechat"]) == {"login_enabled", "billing_enabled", "credits_per_enhancement"}
    admin_text = await (await gateway.client.get("/api/v1/admin/config", headers=gateway.admin_headers())).text()
    for secret in secrets_:
        assert secret not in admin_text
    config = json.loads(admin_text)
    assert config["wechat"]["secret"] == "***" and config["wechat"]["apiv3_key"] == "***"
    # The merchant key is a file path in the config, never its content.
    assert serialization.load_pem_private_key(merchant_pem.encode(), None)


async def test_tasks_visible_to_their_owner_only(wx_gateway: Gateway, fake_wechat: FakeWechat, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway, fake = wx_gateway, fake_wechat
    await gateway.register(await nodes())
    alice, _ = await login(gateway, "alice")
    bob, _ = await login(gateway, "bob")
    await buy(gateway, fake, alice)
    resp = await _enhance(gateway, alice)
    task_id = (await resp.json())["task_id"]
    for path in (f"/api/v1/status/{task_id}", f"/api/v1/download/{task_id}"):
        resp = await gateway.client.get(path, headers=bearer(bob))
        assert resp.status == 404 and "unknown task" in (await resp.json())["error"]
        resp = await gateway.client.get(path)
        assert resp.status == 401
        resp = await gateway.client.get(path, headers=bearer("not-a-session"))
        assert resp.status == 401 and "expired" in (await resp.json())["error"]
    resp = await gateway.client.get(f"/api/v1/status/{task_id}", headers=bearer(alice))
    assert resp.status == 200 and (await resp.json())["task_id"] == task_id
    assert (await user(gateway, bob))["tasks"] == []
    await wait_task(gateway, alice, task_id)


async def test_failed_task_gives_the_credit_back(wx_gateway: Gateway, fake_wechat: FakeWechat, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway, fake = wx_gateway, fake_wechat
    node = await nodes()
    node.mode = "reject400"
    await gateway.register(node)
    token, _ = await login(gateway, "dave")
    await buy(gateway, fake, token)
    resp = await _enhance(gateway, token)
    task_id = (await resp.json())["task_id"]
    from support import wait_until

    async def refunded() -> bool:
        me = await user(gateway, token)
        return me["credits"] == 10 and me["tasks"][0]["status"] == "failed"

    await wait_until(refunded, 15, "the failed task's credit to come back")
    resp = await gateway.client.get(f"/api/v1/status/{task_id}", headers=bearer(token))
    assert (await resp.json())["status"] == "failed"
    assert await gateway.app[WECHAT].refund_task(task_id) == 0  # never twice


async def test_legacy_orders_path_answers_own_openid_only(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway, fake = wx_gateway, fake_wechat
    alice, alice_openid = await login(gateway, "alice")
    bob, _ = await login(gateway, "bob")
    no = await buy(gateway, fake, alice)
    resp = await gateway.client.get(f"/api/wechat/pay/orders/{alice_openid}", headers=bearer(alice))
    body = await resp.json()
    assert resp.status == 200 and [o["out_trade_no"] for o in body["orders"]] == [no]
    resp = await gateway.client.get(f"/api/wechat/pay/orders/{alice_openid}", headers=bearer(bob))
    assert resp.status == 403
    resp = await gateway.client.get(f"/api/wechat/pay/orders/{alice_openid}")
    assert resp.status == 401
    resp = await gateway.client.get(f"/api/wechat/pay/query/{no}", headers=bearer(bob))
    assert resp.status == 404


async def test_pay_create_needs_a_session_and_a_known_product(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway = wx_gateway
    resp = await gateway.client.post("/api/wechat/pay/create", json={"product": "credits10"})
    assert resp.status == 401
    token, _ = await login(gateway, "erin")
    resp = await gateway.client.post("/api/wechat/pay/create", json={"product": "free"}, headers=bearer(token))
    assert resp.status == 400 and "credits10, credits50" in (await resp.json())["error"]
    resp = await gateway.client.get("/api/wechat/pay/products")
    assert [p["product"] for p in (await resp.json())["products"]] == ["credits10", "credits50"]
    assert fake_wechat.orders == {}


async def test_query_settles_an_order_whose_notification_is_late(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway, fake = wx_gateway, fake_wechat
    token, _ = await login(gateway, "frank")
    no = (await create_order(gateway, token, "credits50"))["out_trade_no"]
    resp = await gateway.client.get(f"/api/wechat/pay/query/{no}", headers=bearer(token))
    assert (await resp.json())["order"]["state"] == "created"
    fake.pay(no)
    resp = await gateway.client.get(f"/api/wechat/pay/query/{no}", headers=bearer(token))
    assert (await resp.json())["order"]["state"] == "paid"
    assert (await user(gateway, token))["credits"] == 50
    status, _ = await fake.post(notify_url(gateway), *fake.notification(fake.transaction(no)))
    assert status == 204
    assert (await user(gateway, token))["credits"] == 50
    assert ("GET", f"/v3/pay/transactions/out-trade-no/{no}?mchid=1900000109") in fake.pay_requests
    assert fake.auth_failures == []


async def test_reconcile_credits_paid_and_closes_stale_orders(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    gateway, fake = wx_gateway, fake_wechat
    token, _ = await login(gateway, "gina")
    paid = (await create_order(gateway, token))["out_trade_no"]
    unpaid = (await create_order(gateway, token))["out_trade_no"]
    lost = (await create_order(gateway, token))["out_trade_no"]
    del fake.orders[lost]  # WeChat never saw it
    fake.pay(paid)
    service = gateway.app[WECHAT]
    none = {"paid": 0, "closed": 0, "pending": 0, "errors": 0, "refunded": 0, "refund_closed": 0,
            "refund_pending": 0}
    assert await service.reconcile() == none  # not stale yet
    counts = await service.reconcile(now=time.time() + service.cfg.order_ttl + 1)
    # The lost order: WeChat answers an unsigned 404 ORDER_NOT_EXIST, which closes it (not an error).
    assert counts == {**none, "paid": 1, "closed": 2}
    assert fake.closed == [unpaid]
    assert await service.reconcile(now=time.time() + service.cfg.order_ttl + 1) == none  # settled for good
    states = {o["out_trade_no"]: o["state"] for o in (await user(gateway, token))["orders"]}
    assert states == {paid: "paid", unpaid: "closed", lost: "closed"}
    assert (await user(gateway, token))["credits"] == 10
    resp = await gateway.client.post("/api/wechat/admin/reconcile")
    assert resp.status == 401


async def test_admin_refund(wx_gateway: Gateway, fake_wechat: FakeWechat, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway, fake = wx_gateway, fake_wechat
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    token, _ = await login(gateway, "hank")
    no = await buy(gateway, fake, token)
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no}, headers=bearer(token))
    assert resp.status == 403
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no, "reason": "测试"},
                                     headers=admin)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["order"]["state"] == "refunded" and body["refund_status"] == "SUCCESS"
    assert fake.refunds[0]["amount"] == {"refund": 100, "total": 100, "currency": "CNY"}
    assert fake.refunds[0]["reason"] == "测试"
    assert (await user(gateway, token))["credits"] == 0
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no}, headers=admin)
    assert resp.status == 409

    # Credits already spent: refused unless forced.
    await gateway.register(await nodes())
    no2 = await buy(gateway, fake, token)
    resp = await _enhance(gateway, token)
    assert resp.status == 200
    await wait_task(gateway, token, (await resp.json())["task_id"])
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no2}, headers=admin)
    assert resp.status == 409 and "already spent" in (await resp.json())["error"]
    assert (await user(gateway, token))["credits"] == 9
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no2, "force": True},
                                     headers=admin)
    assert resp.status == 200
    assert (await user(gateway, token))["credits"] == 0


async def test_concurrent_uploads_never_overspend(make_wx_gateway, fake_wechat: FakeWechat, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_wx_gateway(**{"wechat.credits_per_enhancement": 4})
    await gateway.register(await nodes())
    token, _ = await login(gateway, "ivan")
    await buy(gateway, fake_wechat, token)  # 10 credits: two enhancements at 4
    responses = await asyncio.gather(*(_enhance(gateway, token) for _ in range(5)))
    assert sorted(r.status for r in responses) == [200, 200, 402, 402, 402]
    for resp in responses:
        if resp.status == 200:
            await wait_task(gateway, token, (await resp.json())["task_id"])
    assert (await user(gateway, token))["credits"] == 2


async def test_login_optional_keeps_the_open_api(make_wx_gateway, fake_wechat: FakeWechat, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_wx_gateway(**{"wechat.login_enabled": False, "wechat.billing_enabled": False})
    await gateway.register(await nodes())
    anonymous = await gateway.submit()
    assert (await gateway.wait_done(anonymous))["status"] == "completed"  # old clients: no token, no charge
    token, _ = await login(gateway, "judy")
    resp = await _enhance(gateway, token)
    task_id = (await resp.json())["task_id"]
    assert [t["task_id"] for t in (await user(gateway, token))["tasks"]] == [task_id]  # owned all the same
    assert (await gateway.status(task_id))["task_id"] == task_id  # visible by id, as before
    await wait_task(gateway, None, task_id)
    resp = await gateway.client.post("/api/wechat/pay/create", json={"product": "credits10"}, headers=bearer(token))
    assert resp.status == 404 and "not enabled" in (await resp.json())["error"]


async def test_charges_of_tasks_failed_while_unhooked_are_refunded(wx_gateway: Gateway,
                                                                   fake_wechat: FakeWechat) -> None:
    """A crash between a task failing and its refund: the sweep (start-up, reconcile) gives it back."""
    from photogate.keys import GATEWAY
    from photogate.models import TaskRecord, TaskStatus

    gateway = wx_gateway
    token, openid = await login(gateway, "kate")
    await buy(gateway, fake_wechat, token)
    service, store = gateway.app[WECHAT], gateway.app[GATEWAY].store
    now = time.time()
    task = TaskRecord(task_id="f" * 32, status=TaskStatus.FAILED, created_at=now, updated_at=now,
                      input_mime="image/png", input_bytes=1, width=1, height=1, owner=openid)
    await store.insert_task(task)
    assert await service.charge(openid, task.task_id)
    assert (await user(gateway, token))["credits"] == 9
    await service.reconcile()
    assert (await user(gateway, token))["credits"] == 10
    await service.reconcile()
    assert (await user(gateway, token))["credits"] == 10


async def test_refund_completes_on_its_notification(wx_gateway: Gateway, fake_wechat: FakeWechat) -> None:
    """Issue 14, item 10: the refund request names our notify URL, so WeChat notifies at all."""
    gateway, fake = wx_gateway, fake_wechat
    token, _ = await login(gateway, "leo")
    no = await buy(gateway, fake, token)
    fake.refund_status = "PROCESSING"
    resp = await gateway.client.post("/api/wechat/admin/refunds", json={"out_trade_no": no},
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert (await resp.json())["order"]["state"] == "refunding"
    assert fake.refunds[0]["notify_url"] == "https://photo.example.com/api/wechat/pay/notify"
    fake.notify_base = str(gateway.client.make_url("/"))
    assert await fake.finish_refund(fake.refunds[0]["out_refund_no"]) == 204  # None: nothing was sent
    me = await user(gateway, token)
    assert me["orders"][0]["state"] == "refunded" and me["credits"] == 0
    assert me["orders"][0]["refund_id"] == fake.refund_records[fake.refunds[0]["out_refund_no"]]["refund_id"]
