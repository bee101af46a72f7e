"""Abuse of the public endpoints: every bad input gets a 4xx JSON error a user can act on,
never a 500 and never a traceback. Webhook secrets, node addresses, uploads, task ids, the
admin API, CORS, per-IP rate limits, slow clients, and property-based tests (hypothesis).

Tasks owned by WeChat users (login on): tests/wechat/test_wechat_flow.py
(test_tasks_visible_to_their_owner_only, test_legacy_orders_path_answers_own_openid_only).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import secrets
import struct
import time
import zlib
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import FormData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ADMIN_TOKEN, SECRET, Gateway, image_bytes, make_config

from photogate.app import create_app
from photogate.config import load_config
from photogate.keys import GATEWAY

HYPOTHESIS = settings(max_examples=120, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NO_LIMITS = {"rate_limit.exempt": []}


async def _json_error(resp: Any, *statuses: int) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status in statuses, (resp.status, text[:300])
    assert "Traceback" not in text and 'File "' not in text
    body = json.loads(text)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body


async def _upload(gw: Gateway, data: bytes, *, filename: str = "p.jpg", ctype: str = "image/jpeg",
                  **fields: str) -> Any:
    form = FormData()
    form.add_field("file", data, filename=filename, content_type=ctype)
    for key, value in fields.items():
        form.add_field(key, value)
    return await gw.client.post("/api/v1/enhance", data=form)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


# -- webhook ----------------------------------------------------------------------------------


async def test_webhook_secret_missing_empty_wrong_or_in_query_only(gateway: Gateway) -> None:
    good = {"ip": "127.0.0.1", "port": 9000}
    with structlog.testing.capture_logs() as logs:
        await _json_error(await gateway.client.post("/webhook/register", json=good), 401)
        await _json_error(await gateway.client.post("/webhook/register", json={**good, "secret": ""}), 401)
        await _json_error(await gateway.client.post("/webhook/register", json={**good, "secret": "guess"}), 403)
        await _json_error(await gateway.client.post("/webhook/register", json={**good, "secret": 12345}), 401)
        # A secret in the URL ends up in access logs: register never reads it from there.
        await _json_error(await gateway.client.post(f"/webhook/register?secret={SECRET}", json=good), 401)
        await _json_error(await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": "x"}), 403)
    refused = [e for e in logs if e.get("action") in ("register_refused", "list_refused")]
    assert len(refused) == 6 and all(e["client_ip"] == "127.0.0.1" for e in refused)
    assert SECRET not in repr(logs)
    body = await (await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})).json()
    assert body["data"]["servers"] == []


async def test_webhook_brute_force_is_rate_limited_and_audited(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**NO_LIMITS, **{"rate_limit.auth_failure_burst": 5})
    with structlog.testing.capture_logs() as logs:
        statuses = []
        for i in range(12):
            resp = await gw.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 9000, "secret": f"g{i}"})
            statuses.append(resp.status)
            if resp.status == 429:
                body = await _json_error(resp, 429)
                assert int(resp.headers["Retry-After"]) >= 1 and "failed credentials" in body["error"]
        # Blocked means blocked: the right secret from that address waits too, and so does the admin API.
        resp = await gw.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 9000, "secret": SECRET})
        await _json_error(resp, 429)
        await _json_error(await gw.client.get("/api/v1/admin/tasks", headers=gw.admin_headers()), 429)
    assert statuses == [403] * 5 + [429] * 7
    limited = [e for e in logs if e.get("action") == "auth_rate_limited"]
    assert len(limited) == 1 and limited[0]["client_ip"] == "127.0.0.1"  # once per episode, not per request
    # The public API is not part of it.
    assert (await gw.client.get("/api/v1/health")).status == 200


async def test_webhook_malformed_and_huge_json(gateway: Gateway) -> None:
    for raw in (b"{", b"\xff\xfe", b"[1, 2]", b"null", b'"secret"', b"{'ip': 1}", b"1e999999"):
        await _json_error(await gateway.client.post("/webhook/register", data=raw,
                                                    headers={"Content-Type": "application/json"}), 400)
    huge = json.dumps({"secret": SECRET, "ip": "127.0.0.1", "port": 1, "pad": "x" * 100_000}).encode()
    await _json_error(await gateway.client.post("/webhook/register", data=io.BytesIO(huge),
                                                headers={"Content-Type": "application/json"}), 400, 413)
    deep = b"[" * 50_000 + b"]" * 50_000
    await _json_error(await gateway.client.post("/webhook/register", data=io.BytesIO(deep)), 400, 413)
    await _json_error(await gateway.client.post("/webhook/register", data=io.BytesIO(b"x" * (3 * 1024 * 1024))),
                      400, 413)


@pytest.mark.parametrize("port", [0, 70000, -1, "80a", 3.5, True, None])
async def test_webhook_port_out_of_range(gateway: Gateway, port: Any) -> None:
    body = await _json_error(await gateway.client.post(
        "/webhook/register", json={"ip": "203.0.113.9", "port": port, "secret": SECRET}), 400)
    assert "port" in body["error"]


async def test_node_addresses_outside_the_allow_list_refused(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{"webhook.allowed_node_networks": ["203.0.113.0/24"]})
    with structlog.testing.capture_logs() as logs:
        for ip in ("10.1.2.3", "192.168.1.5", "127.0.0.1", "::1", "::ffff:127.0.0.1", "169.254.169.254",
                   "fe80::1", "0.0.0.0", "224.0.0.1", "198.51.100.1"):
            body = await _json_error(await gw.client.post(
                "/webhook/register", json={"ip": ip, "port": 9000, "secret": SECRET}), 403)
            assert "ip:" in body["error"]
        resp = await gw.client.post("/webhook/register", json={"ip": "203.0.113.7", "port": 9000, "secret": SECRET})
        assert resp.status == 200 and (await resp.json())["server_id"] == "GPU-001"
    assert len([e for e in logs if e.get("action") == "register_refused"]) == 10
    # Link-local stays refused even when listed wholesale (the cloud metadata service).
    gw2 = await make_gateway(**{"webhook.allowed_node_networks": ["0.0.0.0/0"]})
    await _json_error(await gw2.client.post(
        "/webhook/register", json={"ip": "169.254.169.254", "port": 80, "secret": SECRET}), 403)


async def test_loopback_nodes_allowed_in_dev_mode(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(None, env={}, dev=True, overrides={
        "webhook.secret": SECRET, "storage.data_dir": str(tmp_path / "data"),
        "webhook.allowed_node_networks": ["203.0.113.0/24"]})
    gw = Gateway(await aiohttp_client(create_app(cfg)))
    resp = await gw.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 9000, "secret": SECRET})
    assert resp.status == 200
    await _json_error(await gw.client.post(
        "/webhook/register", json={"ip": "10.0.0.1", "port": 9000, "secret": SECRET}), 403)


# -- uploads ----------------------------------------------------------------------------------


async def test_bad_uploads_get_the_right_4xx(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    jpeg = image_bytes(64, 48, "JPEG")
    cases: list[tuple[bytes, int, str]] = [
        (b"", 400, "empty"),
        (b"GIF89a" + b"\0" * 100, 415, "not a supported image"),
        (b"<html><script>alert(1)</script></html>", 415, "not a supported image"),
        (b"MZ\x90\0" + b"\0" * 200, 415, "not a supported image"),
        (jpeg[: len(jpeg) // 2], 400, "truncated or corrupt"),
        (b"\xff\xd8\xff\xe0<html>" + b"A" * 300, 400, "truncated or corrupt"),
        (png_claiming(100_000, 100_000), 413, "megapixel"),
        (png_claiming(65535, 65535), 413, "megapixel"),
        (image_bytes(1, 100_000, "PNG"), 413, "longest side"),
        (image_bytes(100_000, 1, "PNG"), 413, "longest side"),
    ]
    for data, code, words in cases:
        body = await _json_error(await _upload(gateway, data), code)
        assert words in body["error"], (code, body)
    # The file name and declared type count for nothing: the bytes decide.
    resp = await _upload(gateway, image_bytes(), filename="../../etc/passwd", ctype="text/html")
    assert resp.status == 200
    form = FormData()
    form.add_field("photo", image_bytes(), filename="p.png", content_type="image/png")
    body = await _json_error(await gateway.client.post("/api/v1/enhance", data=form), 400)
    assert "'file'" in body["error"]
    form = FormData()
    for _ in range(3):
        form.add_field("file", image_bytes(), filename="p.png", content_type="image/png")
    body = await _json_error(await gateway.client.post("/api/v1/enhance", data=form), 400)
    assert "one photo per request" in body["error"]
    await _json_error(await gateway.client.post("/api/v1/enhance", data=image_bytes(),
                                                headers={"Content-Type": "image/png"}), 400)
    for fields in ({"scale": "nan"}, {"scale": "1e308"}, {"format": "gif"}, {"quality": "-1"}, {"quality": "1" * 2000}):
        await _json_error(await _upload(gateway, image_bytes(), **fields), 400)
    # Nothing of the refused uploads was kept.
    inputs = gateway.app[GATEWAY].blobs.inputs
    assert len([p for p in inputs.iterdir()]) == 1


async def test_polyglot_upload_never_served_back(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    payload = b"<html><script>alert(document.cookie)</script></html>PK\x03\x04zipzipzip"
    task_id = await gateway.submit(image_bytes(32, 24) + payload)  # a valid PNG with a page and a zip behind it
    assert (await gateway.wait_done(task_id))["status"] == "completed"
    resp = await gateway.client.get(f"/api/v1/download/{task_id}")
    data = await resp.read()
    assert resp.status == 200 and payload not in data
    assert resp.headers["Content-Type"] == "image/png" and resp.headers["Content-Disposition"].startswith("attachment")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def _raw_request(host: str, port: int, head: bytes, trickle: list[bytes], gap: float,
                       timeout: float) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    try:
        writer.write(head)
        await writer.drain()

        async def drip() -> None:
            for piece in trickle:
                await asyncio.sleep(gap)
                writer.write(piece)
                await writer.drain()

        dripping = asyncio.create_task(drip())
        try:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        finally:
            dripping.cancel()
            await asyncio.gather(dripping, return_exceptions=True)
        length = int(re.search(rb"Content-Length: (\d+)", answer, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        return answer + await asyncio.wait_for(reader.readexactly(length), timeout), time.monotonic() - start
    finally:
        writer.close()


async def test_slow_loris_upload_bounded_by_read_timeouts(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{"limits.read_timeout": 0.5, "limits.upload_timeout": 1.5})
    node = await nodes()
    await gw.register(node)
    host, port = gw.client.server.host, gw.client.server.port
    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image_bytes()[:40])
    head = (b"POST /api/v1/enhance HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n" + part)
    # Stalls after the first bytes: cut by the read timeout (its message), not before it; the
    # upper bound is only a guard (10x), the answer's text says which bound cut it.
    answer, seconds = await _raw_request(host, port, head, [], 0, 5)
    assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer and 0.5 <= seconds < 5, (answer[:200], seconds)
    # Sends a little every 0.2 s for 30 s: never stalls long enough, but the upload as a whole
    # is cut at upload_timeout, long before the drip would end.
    answer, seconds = await _raw_request(host, port, head, [b"x" * 64] * 150, 0.2, 15)
    assert answer.startswith(b"HTTP/1.1 408") and b"took longer" in answer and 1.5 <= seconds < 15, \
        (answer[:200], seconds)
    assert not list(gw.app[GATEWAY].blobs.inputs.iterdir())
    # The gateway still serves everyone else.
    task_id = await gw.submit()
    assert (await gw.wait_done(task_id))["status"] == "completed"


async def test_slow_loris_headers_bounded_in_the_gateway_process(gateway_process) -> None:  # type: ignore[no-untyped-def]
    """The request line, then one header a second, never the blank line: cut at read_timeout."""
    gw = gateway_process("limits:\n  read_timeout: 1\n")
    gw.start()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    start = time.monotonic()
    sent = 0

    async def drip() -> None:
        nonlocal sent
        writer.write(b"POST /api/v1/enhance HTTP/1.1\r\n")
        for i in range(100):  # 30 s of headers: only the gateway can end this early
            writer.write(b"X-Slow-%d: x\r\n" % i)
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.3)

    dripping = asyncio.create_task(drip())
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the gateway
        # Closed while headers were still coming, not after the client gave up: the bound is the
        # gateway's. 10 s (10x read_timeout) is a guard; the ordering is the claim.
        assert sent < 100, sent
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
    assert time.monotonic() - start >= 0.9  # not before read_timeout (its clock starts at accept, just before ours)


# -- task ids ---------------------------------------------------------------------------------


async def test_task_ids_are_unguessable_and_traversal_proof(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    ids = {await gateway.submit() for _ in range(20)}
    assert len(ids) == 20 and all(re.fullmatch(r"[0-9a-f]{32}", t) for t in ids)  # 128 random bits each
    for _ in range(200):
        guess = secrets.token_hex(16)
        await _json_error(await gateway.client.get(f"/api/v1/status/{guess}"), 404)
    for bad in ("..%2F..%2Fphotogate.db", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "....//....//photogate.db",
                "..\\..\\photogate.db", "inputs", "x" * 5000, "%00", "ＡＢＣ", next(iter(ids)).upper(),
                next(iter(ids)) + "%2F..%2Fx"):
        for path in ("status", "download"):
            resp = await gateway.client.get(f"/api/v1/{path}/{bad}")
            assert resp.status == 404, (bad, resp.status)
            assert b"SQLite" not in await resp.read()
    resp = await gateway.client.get("/api/v1/download/../../photogate.db")
    assert resp.status == 404


# -- admin API and CORS ----------------------------------------------------------------------


async def test_admin_api_without_or_with_a_wrong_token(gateway: Gateway) -> None:
    with structlog.testing.capture_logs() as logs:
        resp = await gateway.client.post("/api/v1/config/multi-backend", json={"enabled": False})
        await _json_error(resp, 401)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                        {"Authorization": f"Bearer {ADMIN_TOKEN}x"}, {"Authorization": "Bearer "}):
            resp = await gateway.client.get("/api/v1/admin/tasks", headers=headers)
            assert resp.status in (401, 403)
            await _json_error(resp, 401, 403)
    assert len([e for e in logs if e.get("action") == "admin_refused"]) == 5
    assert ADMIN_TOKEN not in repr(logs)
    assert gateway.app[GATEWAY].multi_backend is True


async def test_admin_api_disabled_without_a_token(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{"admin.token": ""})
    body = await _json_error(await gw.client.get("/api/v1/admin/tasks", headers={"Authorization": "Bearer "}), 403)
    assert "disabled" in body["error"]


async def test_cors_preflight_from_a_disallowed_origin(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{"cors.origins": ["https://app.example.com"]})
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Content-Type"}
    resp = await gw.client.options("/api/v1/enhance", headers={"Origin": "https://evil.example", **preflight})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await gw.client.options("/api/v1/enhance", headers={"Origin": "https://app.example.com", **preflight})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    resp = await gw.client.get("/api/v1/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


# -- rate limits ------------------------------------------------------------------------------


async def test_rate_limit_per_client_ip_with_retry_after(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{"server.trusted_proxies": ["127.0.0.1"], "rate_limit.requests_per_second": 1.0,
                               "rate_limit.burst": 5, "rate_limit.upload_burst": 2})
    node = await nodes()
    await gw.register(node)
    one = {"X-Forwarded-For": "198.51.100.7"}
    codes = [(await gw.client.get("/api/v1/health", headers=one)).status for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
    resp = await gw.client.get("/api/v1/status/" + "0" * 32, headers=one)
    body = await _json_error(resp, 429)
    assert 1 <= int(resp.headers["Retry-After"]) <= 2 and "slow down" in body["error"]
    # Another address has its own bucket; loopback itself is exempt by default.
    assert (await gw.client.get("/api/v1/health", headers={"X-Forwarded-For": "198.51.100.8"})).status == 200
    assert all([(await gw.client.get("/api/v1/health")).status == 200 for _ in range(20)])
    # Uploads have a bucket of their own, on top.
    other = {"X-Forwarded-For": "203.0.113.50"}
    codes = []
    for _ in range(3):
        form = FormData()
        form.add_field("file", image_bytes(), filename="p.png", content_type="image/png")
        codes.append((await gw.client.post("/api/v1/enhance", data=form, headers=other)).status)
    assert codes == [200, 200, 429]


# -- property-based: no input ever gets a 500 -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
register_like = st.fixed_dictionaries({}, optional={
    "ip": st.one_of(st.text(max_size=40), st.ip_addresses().map(str), json_values),
    "port": st.one_of(st.integers(), st.text(max_size=8), json_values),
    "secret": st.one_of(st.just(SECRET), st.text(max_size=20), json_values),
    "slots": json_values, "weight": json_values, "node_key": json_values, "server_id": json_values,
    "enabled": json_values, "strategy": json_values, "options": json_values,
})
bodies = st.one_of(register_like.map(lambda d: json.dumps(d).encode()),
                   json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300))
JSON_ROUTES = ["/webhook/register", "/webhook/unregister", "/api/v1/config/multi-backend", "/api/v1/config/strategy",
               "/api/v1/config/reload", "/api/v1/admin/servers/GPU-001/drain"]


@HYPOTHESIS
@given(path=st.sampled_from(JSON_ROUTES), body=bodies, admin=st.booleans(),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
async def test_any_json_body_gets_a_json_answer_never_a_500(gateway: Gateway, path: str, body: bytes, admin: bool,
                                                            ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    if admin:
        headers.update(gateway.admin_headers())
    resp = await gateway.client.post(path, data=body, headers=headers)
    text = await resp.text()
    assert resp.status < 500, (path, body[:200], resp.status, text[:300])
    assert "Traceback" not in text
    if resp.status >= 400:
        assert isinstance(json.loads(text).get("error"), str)


def _mutate(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in cuts:
        if out:
            out[position % len(out)] = value
    return bytes(out)


SEEDS = [image_bytes(24, 16, fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP")]


@HYPOTHESIS
@given(data=st.one_of(
    st.binary(max_size=2000),
    st.builds(_mutate, st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                        max_size=6)),
    st.builds(lambda seed, n: seed[:n], st.sampled_from(SEEDS), st.integers(0, 400)),
), fields=st.dictionaries(st.sampled_from(["scale", "format", "quality", "quality_level", "tile_size", "file2"]),
                          st.text(max_size=30), max_size=3),
   wait=st.one_of(st.none(), st.text(max_size=6)))
async def test_any_upload_gets_200_or_a_4xx_never_a_500(gateway: Gateway, nodes, data: bytes,  # type: ignore[no-untyped-def]
                                                        fields: dict[str, str], wait: str | None) -> None:
    if not gateway.app[GATEWAY].registry.all():
        await gateway.register(await nodes())
    form = FormData()
    form.add_field("file", data, filename="x", content_type="application/octet-stream")
    for key, value in fields.items():
        form.add_field(key, value)
    query = {"wait": wait[:3] if wait else ""} if wait else None
    resp = await gateway.client.post("/api/v1/enhance", data=form, params=query)
    text = await resp.text()
    assert resp.status == 200 or 400 <= resp.status < 500, (data[:60], fields, resp.status, text[:300])
    assert "Traceback" not in text
    assert isinstance(json.loads(text), dict)


async def test_wechat_json_bodies_never_a_500(aiohttp_client, tmp_path, closed_port: int) -> None:  # type: ignore[no-untyped-def]
    """The WeChat endpoints' JSON: bad bodies 400/401; a code WeChat cannot be asked about: 502/503."""
    cfg = make_config(tmp_path, **{"wechat.appid": "wx0123456789abcdef", "wechat.secret": "s" * 32,
                                   "wechat.api_base": f"http://127.0.0.1:{closed_port}", "wechat.timeout": 1.0})
    gw = Gateway(await aiohttp_client(create_app(cfg)))

    @HYPOTHESIS
    @given(body=bodies, path=st.sampled_from(["/api/wechat/login", "/api/wechat/auth/openid",
                                              "/api/wechat/pay/create"]))
    def check(body: bytes, path: str) -> None:
        answers.append((path, body))

    answers: list[tuple[str, bytes]] = []
    check()
    for path, body in answers:
        resp = await gw.client.post(path, data=body)
        text = await resp.text()
        assert resp.status < 500 or resp.status in (502, 503), (path, body[:100], resp.status, text[:200])
        assert "Traceback" not in text and isinstance(json.loads(text).get("error"), str)


# -- the limiter and its configuration, without a server ---------------------------------------


def test_token_bucket_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    from photogate.ratelimit import MAX_CLIENTS, Limiter

    now = [1000.0]
    limiter = Limiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert limiter.take("b") == 0.0  # another client, another bucket
    now[0] += 0.25
    assert limiter.take("a") == pytest.approx(0.25)
    now[0] += 0.25
    assert limiter.take("a") == 0.0 and limiter.peek("a") == pytest.approx(0.5)
    now[0] += 100
    assert [limiter.take("a") for _ in range(4)][-1] > 0  # never more than the burst
    for i in range(MAX_CLIENTS + 10):  # a scan from many addresses: idle buckets are dropped
        limiter.take(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        now[0] += 1
    assert len(limiter) <= MAX_CLIENTS + 10


@pytest.mark.parametrize(("key", "value", "words"), [
    ("rate_limit.burst", 0, "rate_limit.burst: must be >= 1"),
    ("rate_limit.requests_per_second", -1, "rate_limit.requests_per_second: must be > 0"),
    ("rate_limit.exempt", ["not-a-net"], "rate_limit.exempt[0]: not an IP address or network"),
    ("webhook.allowed_node_networks", ["10.0.0.0/8", "nope"], "webhook.allowed_node_networks[1]"),
    ("limits.read_timeout", 0, "limits.read_timeout: must be > 0"),
    ("limits.max_side", 0, "limits.max_side: must be >= 1"),
    ("dispatch.retry_backoff", -1, "dispatch.retry_backoff: must be >= 0"),
])
def test_bad_abuse_settings_name_their_key(tmp_path, key: str, value: Any, words: str) -> None:  # type: ignore[no-untyped-def]
    from photogate.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(words)):
        make_config(tmp_path, **{key: value})
