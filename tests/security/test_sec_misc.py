"""Issue 13, items 5, 11, 14(c), 14(d), 14(e): one failed-credential bucket for the dashboard
and the admin API, disk full on registration and uploads, the public config view, logout
revoking the dashboard cookie. (14(e), the secret out of ``ps``: tests/gpunode/test_gpunode_secret_file.py,
where ``import gpunode`` finds the package and not the test folder)."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from PIL import Image
from support import ADMIN_TOKEN, SECRET, Gateway

from photogate.adminauth import COOKIE
from photogate.blobs import BlobWriter
from photogate.keys import GATEWAY
from photogate.ratelimit import RATE_LIMITS

NO_EXEMPT = {"rate_limit.exempt": []}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _login(gw: Gateway, token: str) -> aiohttp.ClientResponse:
    return await gw.client.post("/dashboard/login", data={"token": token}, allow_redirects=False)


# -- item 5: the dashboard counts in the admin API's failed-credential bucket ------------------


async def test_dashboard_and_admin_failures_share_one_bucket(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = await make_gateway(**NO_EXEMPT, **{"rate_limit.auth_failure_burst": 5})
    clock = Clock()
    gw.app[RATE_LIMITS].auth_failures.clock = clock  # the window passes when the test says so
    # Opening the login page is no failed credential, however often.
    for _ in range(8):
        page = await gw.client.get("/dashboard")
        assert page.status == 401 and 'action="/dashboard/login"' in await page.text()

    wrong = {"Authorization": "Bearer wrong-token"}
    assert (await gw.client.get("/api/v1/admin/tasks", headers=wrong)).status == 403
    assert (await _login(gw, "guess-1")).status == 403
    assert (await _login(gw, "guess-2")).status == 403
    assert (await gw.client.get("/dashboard/state", headers=wrong)).status == 401
    forged = await gw.client.get("/dashboard/state", cookies={COOKIE: "99999999999.00.ff"})
    assert forged.status == 401

    # Five failures, from either door: now every credential check from here waits, the right token too.
    with structlog.testing.capture_logs() as logs:
        for resp in (await _login(gw, ADMIN_TOKEN),
                     await gw.client.get("/dashboard/state", headers=gw.admin_headers()),
                     await gw.client.get("/api/v1/admin/tasks", headers=gw.admin_headers())):
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert "failed credentials" in (await resp.json())["error"]
    assert [e["action"] for e in logs if e.get("event") == "audit"] == ["auth_rate_limited"]
    assert (await gw.client.get("/api/v1/health")).status == 200  # the public API is not part of it

    clock.now += 60  # the window passes
    resp = await _login(gw, ADMIN_TOKEN)
    assert resp.status == 303 and COOKIE in resp.cookies
    assert (await gw.client.get("/api/v1/admin/tasks", headers=gw.admin_headers())).status == 200


# -- item 14(d): logging out revokes the cookie on the gateway ---------------------------------


async def test_logout_revokes_the_cookie(gateway: Gateway) -> None:
    first = (await _login(gateway, ADMIN_TOKEN)).cookies[COOKIE].value
    second = (await _login(gateway, ADMIN_TOKEN)).cookies[COOKIE].value
    gateway.client.session.cookie_jar.clear()
    for cookie in (first, second):
        assert (await gateway.client.get("/dashboard/state", cookies={COOKIE: cookie})).status == 200

    out = await gateway.client.post("/dashboard/logout", cookies={COOKIE: first}, allow_redirects=False)
    assert out.status == 303
    # The old cookie, replayed as it was: refused everywhere, the page shows the login form.
    resp = await gateway.client.get("/dashboard/state", cookies={COOKIE: first})
    assert resp.status == 401 and "log in" in (await resp.json())["error"]
    page = await gateway.client.get("/dashboard", cookies={COOKIE: first})
    assert page.status == 401 and 'action="/dashboard/login"' in await page.text()
    resp = await gateway.client.post("/dashboard/api/multi-backend", json={"enabled": False},
                                     cookies={COOKIE: first}, headers={"X-Photogate-Dashboard": "1"})
    assert resp.status == 401
    # Only that session ended.
    assert (await gateway.client.get("/dashboard/state", cookies={COOKIE: second})).status == 200


# -- item 14(c): the public config holds what a client needs; the rest is the admin's ---------


async def test_public_config_shows_no_operator_details(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir = str(tmp_path / "secret-place" / "data")
    gw: Gateway = await make_gateway(**{
        "storage.data_dir": data_dir, "rate_limit.exempt": ["10.66.0.0/16"],
        "server.trusted_proxies": ["10.55.44.33"], "webhook.allowed_node_networks": ["10.77.0.0/16"],
    })
    resp = await gw.client.get("/api/v1/config")
    assert resp.status == 200
    text = await resp.text()
    for hidden in ("secret-place", "10.66.0.0", "10.55.44.33", "10.77.0.0", "exempt", "trusted_proxies",
                   "allowed_node_networks", "data_dir", "redis", "token", "secret"):
        assert hidden not in text, hidden
    public = await resp.json()
    assert public["limits"]["max_upload_bytes"] == 20 * 1024 * 1024 and public["limits"]["max_pixels"] > 0
    assert public["balancer"] == {"strategy": "round_robin"} and "enabled" in public["multi_backend"]
    assert public["formats"]["output"] == ["jpeg", "png", "webp"]

    # The full view: the admin token on the admin path, refused (and counted) without it.
    assert (await gw.client.get("/api/v1/admin/config")).status == 401
    assert (await gw.client.get("/api/v1/admin/config", headers={"Authorization": "Bearer nope"})).status == 403
    full = await (await gw.client.get("/api/v1/admin/config", headers=gw.admin_headers())).json()
    assert full["storage"]["data_dir"] == data_dir and full["webhook"]["allowed_node_networks"] == ["10.77.0.0/16"]
    assert full["webhook"]["secret"] == "***" and ADMIN_TOKEN not in repr(full)


# -- item 11: a full disk is 503 with Retry-After on every write path, nothing half-written ----


async def test_register_on_a_full_database_is_503_and_writes_nothing(gateway: Gateway) -> None:
    store = gateway.app[GATEWAY].store

    def pin(conn: Any) -> None:  # the file may not grow any more: SQLite says "database or disk is full"
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")

    await store.run(pin)
    ok = 0
    for port in range(1, 200):
        resp = await gateway.client.post("/webhook/register", json={
            "ip": "127.0.0.1", "port": port, "secret": SECRET, "node_key": f"key-{port:05d}", "model": "m" * 400})
        if resp.status != 200:
            break
        ok += 1
    body = await resp.json()
    assert resp.status == 503 and "storage is full" in body["error"], body
    assert int(resp.headers["Retry-After"]) >= 1
    listed = await (await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})).json()
    assert listed["data"]["total_servers"] == ok  # nothing half-written

    await store.run(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))  # room again
    resp = await gateway.client.post("/webhook/register", json={
        "ip": "127.0.0.1", "port": port, "secret": SECRET, "node_key": f"key-{port:05d}", "model": "m" * 400})
    body = await resp.json()
    assert resp.status == 200 and body["server_id"] == f"GPU-{ok + 1:03d}", body  # the counter did not move


def _noise_png(side: int = 300) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(side).randbytes(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def disk_full_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes are taken (into a large buffer, as NFS or a quota'd disk take them) and fail
    with ENOSPC when they reach the disk: at flush or close. The ``.part`` file is real."""

    def flush(self: BlobWriter) -> None:
        if self._fh is None:
            self.partial.touch()
            self._fh = open("/dev/full", "wb", buffering=8 * 1024 * 1024)  # noqa: SIM115 - the writer closes it
        self._fh.write(self._buf)
        self._buf.clear()

    monkeypatch.setattr(BlobWriter, "_flush_sync", flush)


async def test_upload_on_a_full_disk_answers_clearly_and_leaves_no_part(  # type: ignore[no-untyped-def]
        make_gateway, nodes, disk_full_on_close: None) -> None:
    gw: Gateway = await make_gateway(**{"limits.max_upload_bytes": 300 * 1024})
    await gw.register(await nodes())
    blobs = Path(gw.app[GATEWAY].config.storage.data_dir)
    for side, status, words in ((300, 503, "storage is full"),  # ~270 KB: fails when published
                                (330, 413, "exceeds the limit")):  # ~330 KB: over the limit while the disk is full
        photo = _noise_png(side)
        form = aiohttp.FormData()
        form.add_field("file", photo, filename="big.png", content_type="image/png")
        resp = await gw.client.post("/api/v1/enhance", data=form)
        body = await resp.json()
        assert resp.status == status and words in body["error"], (len(photo), resp.status, body)
        if status == 503:
            assert int(resp.headers["Retry-After"]) >= 1
        assert not list(blobs.rglob("*.part"))
