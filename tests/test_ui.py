"""The try-it page and the dashboard over HTTP: login, cookie, actions, config switch, event stream."""

from __future__ import annotations

import json

import structlog
from support import ADMIN_TOKEN, Gateway

from photogate.adminauth import COOKIE, make_session, session_valid

ACTION = {"X-Photogate-Dashboard": "1"}


async def test_try_it_page_and_static_files(gateway: Gateway) -> None:
    resp = await gateway.client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    text = await resp.text()
    assert 'id="upload"' in text and "/static/try-it.js" in text
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    for path, kind in (("/static/try-it.js", "javascript"), ("/static/dashboard.js", "javascript"),
                       ("/static/style.css", "text/css")):
        asset = await gateway.client.get(path)
        assert asset.status == 200 and kind in asset.content_type, path
    assert "http" not in (await (await gateway.client.get("/static/try-it.js")).text()).replace("/api/", "")


async def test_try_it_page_can_be_disabled(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"ui.try_it": False})
    resp = await gateway.client.get("/")
    assert resp.status == 404 and "ui.try_it" in (await resp.json())["error"]


async def test_dashboard_login_sets_a_strict_httponly_cookie(gateway: Gateway) -> None:
    page = await gateway.client.get("/dashboard")
    assert page.status == 401 and 'action="/dashboard/login"' in await page.text()
    assert (await gateway.client.get("/dashboard/state")).status == 401

    with structlog.testing.capture_logs() as logs:
        wrong = await gateway.client.post("/dashboard/login", data={"token": "nope"}, allow_redirects=False)
        right = await gateway.client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert wrong.status == 403 and "Wrong admin token" in await wrong.text()
    assert right.status == 303 and right.headers["Location"] == "/dashboard"
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert ADMIN_TOKEN not in cookie  # a signed expiry, not the token
    assert [e["action"] for e in logs if e["event"] == "audit"] == ["dashboard_login_refused", "dashboard_login"]
    assert "nope" not in repr(logs) and ADMIN_TOKEN not in repr(logs)

    page = await gateway.client.get("/dashboard")  # the client's jar now holds the cookie
    assert page.status == 200 and "/static/dashboard.js" in await page.text()
    state = await (await gateway.client.get("/dashboard/state")).json()
    assert state["nodes"] == [] and state["strategy"] == "round_robin" and "least_busy" in state["strategies"]

    out = await gateway.client.post("/dashboard/logout", allow_redirects=False)
    assert out.status == 303
    assert (await gateway.client.get("/dashboard/state")).status == 401


async def test_bearer_works_and_sessions_are_signed(gateway: Gateway) -> None:
    resp = await gateway.client.get("/dashboard/state", headers=gateway.admin_headers())
    assert resp.status == 200
    assert (await gateway.client.get("/dashboard/state", headers={"Authorization": "Bearer nope"})).status == 401
    good = make_session(ADMIN_TOKEN, 1, now=1000.0)
    assert session_valid(good, ADMIN_TOKEN, now=1000.0)
    assert not session_valid(good, ADMIN_TOKEN, now=1000.0 + 3601)  # expired
    assert not session_valid(good, "another-token", now=1000.0)  # the token changed
    expiry, nonce, mac = good.split(".")
    assert not session_valid(f"{int(expiry) + 9999}.{nonce}.{mac}", ADMIN_TOKEN, now=1000.0)  # tampered
    forged = await gateway.client.get("/dashboard/state", cookies={COOKIE: f"99999999999.{nonce}.{mac}"})
    assert forged.status == 401


async def test_actions_need_the_session_and_the_header(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    path = "/dashboard/api/nodes/GPU-001/drain"
    assert (await gateway.client.post(path, headers=ACTION)).status == 401
    await gateway.client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    no_header = await gateway.client.post(path)
    assert no_header.status == 403 and "X-Photogate-Dashboard" in (await no_header.json())["error"]
    cross = await gateway.client.post(path, headers={**ACTION, "Origin": "https://evil.example"})
    assert cross.status == 403
    with structlog.testing.capture_logs() as logs:
        drained = await gateway.client.post(path, headers=ACTION)
    assert drained.status == 200 and (await drained.json())["server"]["status"] == "draining"
    assert [(e["action"], e["via"]) for e in logs if e["event"] == "audit"] == [("node_drained", "dashboard")]
    state = await (await gateway.client.get("/dashboard/state")).json()
    assert state["nodes"][0]["draining"] is True
    assert (await gateway.client.post("/dashboard/api/nodes/GPU-009/drain", headers=ACTION)).status == 404
    resp = await gateway.client.post("/dashboard/api/strategy", json={"strategy": "least_busy"}, headers=ACTION)
    assert resp.status == 200
    bad = await gateway.client.post("/dashboard/api/strategy", json={"strategy": "no_such"}, headers=ACTION)
    assert bad.status == 400 and "round_robin" in (await bad.json())["error"]
    resp = await gateway.client.post("/dashboard/api/multi-backend", json={"enabled": False}, headers=ACTION)
    assert resp.status == 200
    state = await (await gateway.client.get("/dashboard/state")).json()
    assert (state["strategy"], state["multi_backend"]) == ("least_busy", False)


async def test_event_stream_sends_state(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    resp = await gateway.client.get("/dashboard/events", headers=gateway.admin_headers())
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    data = None
    async for line in resp.content:
        if line.startswith(b"data: "):
            data = json.loads(line[6:])
            break
    resp.close()
    assert data is not None and [n["server_id"] for n in data["nodes"]] == ["GPU-001"]
    assert data["nodes"][0]["status"] == "healthy"


async def test_dashboard_off_without_admin_token(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"admin.token": ""})
    page = await gateway.client.get("/dashboard")
    assert page.status == 403 and "admin.token" in await page.text()
    assert (await gateway.client.get("/dashboard/state")).status == 403


async def test_a_dashboard_swap_changes_where_the_next_jobs_go(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    from test_balancing import placements

    fleet = [await nodes() for _ in range(3)]
    for node, weight in zip(fleet, (1, 3, 1)):
        await gateway.register(node, weight=weight)
    assert await placements(gateway, 3) == ["GPU-001", "GPU-002", "GPU-003"]  # round_robin ignores weights
    await gateway.client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    resp = await gateway.client.post("/dashboard/api/strategy", json={"strategy": "weighted"}, headers=ACTION)
    assert resp.status == 200
    # The weights the nodes registered with, smoothly: 1:3:1.
    assert "".join(s[-1] for s in await placements(gateway, 10)) == "2123221232"
    resp = await gateway.client.post("/dashboard/api/strategy", json={"strategy": "round_robin"}, headers=ACTION)
    assert resp.status == 200
    assert await placements(gateway, 3) == ["GPU-001", "GPU-002", "GPU-003"]
