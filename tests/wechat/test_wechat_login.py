"""Mini-program login (jscode2session error mapping, our own session) and the access_token cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from support import Gateway
from wechat_fake import SESSION_KEY, FakeWechat
from wechat_support import bearer, login, user, wechat_config

from photogate.wechat.login import TOKEN_MARGIN, WechatApi


async def test_login_answers_our_token_never_the_session_key(wx_gateway: Gateway) -> None:
    for path in ("/api/wechat/auth/openid", "/api/wechat/login"):
        resp = await wx_gateway.client.post(path, json={"code": "ok-alice"})
        body = await resp.json()
        assert resp.status == 200, body
        assert set(body) == {"success", "token", "token_type", "expires_in", "openid", "data"}
        assert body["data"] == {k: body[k] for k in ("token", "token_type", "expires_in", "openid")}
        assert body["openid"] == "oalice" and len(body["token"]) >= 40
        assert SESSION_KEY not in await resp.text()
        me = await user(wx_gateway, body["token"])
        assert me["openid"] == "oalice" and me["credits"] == 0
    resp = await wx_gateway.client.get("/api/wechat/user")
    assert resp.status == 401 and "log in with WeChat" in (await resp.json())["error"]
    resp = await wx_gateway.client.get("/api/wechat/user", headers=bearer("forged-token"))
    assert resp.status == 401 and "expired" in (await resp.json())["error"]
    resp = await wx_gateway.client.post("/api/wechat/login", json={"js_code": "ok-alice"})
    assert resp.status == 400 and "wx.login()" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("code", "status", "words", "calls"),
    [
        ("used", 400, "already used", 1),
        ("invalid", 400, "invalid", 1),
        ("rate", 429, "try again in a minute", 1),
        ("blocked", 403, "blocked", 1),
        ("busy", 503, "busy", 2),
        ("busy-once", 200, None, 2),
    ],
)
async def test_jscode2session_errors_mapped(wx_gateway: Gateway, fake_wechat: FakeWechat, code: str, status: int,
                                            words: str | None, calls: int) -> None:
    resp = await wx_gateway.client.post("/api/wechat/auth/openid", json={"code": code})
    body = await resp.json()
    assert resp.status == status, body
    if words:
        assert words in body["error"]
    assert fake_wechat.login_calls[code] == calls
    if status == 429:
        assert resp.headers["Retry-After"] == "60"


async def test_expired_session_refused(make_wx_gateway, fake_wechat: FakeWechat) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_wx_gateway(**{"wechat.session_ttl": 0.05})
    token, _ = await login(gateway, "zoe")

    async def expired() -> bool:
        resp = await gateway.client.get("/api/wechat/user", headers=bearer(token))
        return resp.status == 401

    from support import wait_until

    await wait_until(expired, 5, "the session to expire")


async def test_access_token_single_flight_refresh_and_retry(tmp_path: Path, fake_wechat: FakeWechat) -> None:
    cfg = wechat_config(tmp_path, fake_wechat).wechat
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        api = WechatApi(session, cfg, clock=lambda: now[0])
        tokens = await asyncio.gather(*(api.access_token() for _ in range(10)))
        assert fake_wechat.token_calls == 1 and len(set(tokens)) == 1

        # Close to expiry: refreshed once, before WeChat would refuse it.
        now[0] += 7200 - TOKEN_MARGIN + 1
        fresh = await asyncio.gather(*(api.access_token() for _ in range(5)))
        assert fake_wechat.token_calls == 2 and len(set(fresh)) == 1 and fresh[0] != tokens[0]

        # WeChat says 40001 (another holder refreshed it): one refresh, one retry.
        fake_wechat.revoked.add(fresh[0])
        answer = await api.call("/wxa/msg_sec_check", {"content": "hello"})
        assert answer == {"errcode": 0, "errmsg": "ok"}
        assert fake_wechat.token_calls == 3
        assert fake_wechat.sec_check_tokens[0] == fresh[0] and fake_wechat.sec_check_tokens[1] != fresh[0]
        # The cached token is good again: no refresh, one call.
        await api.call("/wxa/msg_sec_check", {"content": "again"})
        assert fake_wechat.token_calls == 3 and len(fake_wechat.sec_check_tokens) == 3
