"""Request input (issue 13, items 1, 2, 3, 6, 7, 8; acceptance 4): every body is read whole,
with a size limit and deadlines; JSON nesting is bounded; numbers are ASCII digits; aiohttp's
own parse errors are JSON 4xx; a stalled body is answered 408 and its connection closed."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import FormData
from support import ADMIN_TOKEN, SECRET, Gateway, free_port, image_bytes, read_http_answer

from photogate.app import create_app
from photogate.keys import GATEWAY

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "wechat"))
from wechat_fake import FakeWechat, make_keys  # noqa: E402
from wechat_support import create_order, login, notify_url, user, wechat_config  # noqa: E402

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DASHBOARD_ACTION = {**ADMIN, "X-Photogate-Dashboard": "1"}
#: WeChat on, pointing at a port where nothing listens (login answers 502/503, never 500).
WECHAT_OFFLINE = {"wechat.appid": "wx0123456789abcdef", "wechat.secret": "s" * 32, "wechat.login_enabled": True,
                  "wechat.timeout": 1.0}


def _wechat_offline() -> dict[str, Any]:
    return {**WECHAT_OFFLINE, "wechat.api_base": f"http://127.0.0.1:{free_port()}"}


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def error(self) -> str:
        """The ``error`` of a JSON error body (fails the test on anything else)."""
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.headers)
        data = json.loads(self.body)
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], data
        assert "Traceback" not in data["error"]
        return str(data["error"])


async def _read_answer(reader: asyncio.StreamReader, timeout: float) -> Answer:
    return Answer(*await read_http_answer(reader, timeout))


async def exchange(port: int, *parts: bytes, gap: float = 0.0, timeout: float = 10.0) -> Answer:
    """Send ``parts`` on one raw connection (``gap`` s apart: separate TCP segments); read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, part in enumerate(parts):
            if i and gap:
                await asyncio.sleep(gap)  # the client's own pause between segments, not a wait for state
            writer.write(part)
            await writer.drain()
        return await _read_answer(reader, timeout)
    finally:
        writer.close()


def post_head(path: str, length: int, ctype: str = "application/json", extra: dict[str, str] | None = None,
              *, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {ctype}"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def port_of(gw: Gateway) -> int:
    return int(gw.client.server.port)  # type: ignore[arg-type]


async def _error(resp: aiohttp.ClientResponse, status: int) -> str:
    text = await resp.text()
    assert resp.status == status, (resp.status, text[:300])
    body = json.loads(text)
    assert isinstance(body.get("error"), str) and "Traceback" not in text, body
    return str(body["error"])


# -- item 1: nesting depth ------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_400_on_every_json_route(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**_wechat_offline())
    deep = "[" * 8000 + "]" * 8000
    routes = [("/webhook/register", {}), ("/webhook/unregister", {}), ("/api/wechat/login", {}),
              ("/api/wechat/auth/openid", {}), ("/api/v1/config/strategy", ADMIN),
              ("/api/v1/config/multi-backend", ADMIN), ("/dashboard/api/strategy", DASHBOARD_ACTION)]
    for path, headers in routes:
        for body in (deep, f'{{"secret": "{SECRET}", "ip": {deep}}}', "{" + '"a":{' * 40 + "}" * 41):
            resp = await gw.client.post(path, data=body.encode(), headers={"Content-Type": "application/json",
                                                                             **headers})
            assert "nested deeper than 32" in await _error(resp, 400), path
    # 32 levels are fine: the body is read and the request goes on to its secret check.
    nested = "[" * 31 + "]" * 31
    resp = await gw.client.post("/webhook/register", data=f'{{"secret": "wrong", "x": {nested}}}',
                                headers={"Content-Type": "application/json"})
    assert await _error(resp, 403) == "wrong secret"


# -- item 2: unicode digits -----------------------------------------------------------------------

UNICODE_DIGITS = ["²", "٣", "１２", "1²", "৪", "⑤"]


async def test_unicode_digits_are_a_400_naming_the_field(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    for digits in UNICODE_DIGITS:
        for field in ("quality", "scale"):
            form = FormData()
            form.add_field("file", image_bytes(), filename="p.png", content_type="image/png")
            form.add_field(field, digits)
            resp = await gateway.client.post("/api/v1/enhance", data=form)
            assert (await _error(resp, 400)).startswith(f"{field}:"), (field, digits)
        form = FormData()
        form.add_field("file", image_bytes(), filename="p.png", content_type="image/png")
        resp = await gateway.client.post("/api/v1/enhance", data=form, params={"wait": digits})
        assert (await _error(resp, 400)).startswith("wait:"), digits
        resp = await gateway.client.get("/api/v1/admin/tasks", params={"limit": digits}, headers=ADMIN)
        assert (await _error(resp, 400)).startswith("limit:"), digits
        for key in ("port", "slots", "weight"):
            body = {"ip": "127.0.0.1", "port": 9000, "secret": SECRET, key: digits}
            resp = await gateway.client.post("/webhook/register", json=body)
            assert (await _error(resp, 400)).startswith(f"{key}:"), (key, digits)
    # ASCII digits still work where old clients send strings.
    resp = await gateway.client.get("/api/v1/admin/tasks", params={"limit": "5"}, headers=ADMIN)
    assert resp.status == 200


# -- item 3: aiohttp's own parse errors -----------------------------------------------------------


async def test_aiohttp_parse_errors_are_json_4xx(gateway: Gateway) -> None:
    port = port_of(gateway)
    long_id = b"a" * 100_000
    answer = await exchange(port, b"GET /api/v1/status/" + long_id + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 400 <= answer.status < 500 and "too long" in answer.error()
    answer = await exchange(port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n")
    assert 400 <= answer.status < 500 and "too long" in answer.error()
    for junk in (b"GET /api/v1/health HTTP/1.1\r\nNo colon here\r\n\r\n",
                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
                 b"GET /api/v1/health HTTP/9.9\r\n\r\n"):
        answer = await exchange(port, junk)
        assert answer.status == 400 and answer.error().startswith("malformed HTTP request"), junk[:40]
    # A chunked body with a broken chunk size, on a route that reads JSON.
    answer = await exchange(port, post_head("/webhook/register", 0, chunked=True) + b"zz\r\n{}\r\n0\r\n\r\n")
    assert answer.status == 400 and "malformed" in answer.error()


async def test_multipart_part_header_over_the_line_limit_is_a_400(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    port = port_of(gateway)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + b"p" * 9000 + b".png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + image_bytes() + b"\r\n--b--\r\n")
    answer = await exchange(port, post_head("/api/v1/enhance", len(body), "multipart/form-data; boundary=b") + body)
    assert answer.status == 400 and "malformed request body" in answer.error()
    # The gateway still takes the next upload.
    assert await gateway.submit()


# -- item 7: bodies in several TCP segments -------------------------------------------------------


async def test_json_bodies_split_into_two_segments_are_read_whole(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**_wechat_offline())
    port = port_of(gw)

    async def split(path: str, body: bytes, ctype: str = "application/json",
                    headers: dict[str, str] | None = None) -> Answer:
        return await exchange(port, post_head(path, len(body), ctype, headers) + body[:20], body[20:], gap=0.3)

    answer = await split("/webhook/unregister", json.dumps({"ip": "203.0.113.9", "port": 9000,
                                                            "secret": SECRET}).encode())
    assert answer.status == 404 and answer.error() == "no such server registered"
    answer = await split("/api/v1/config/strategy", json.dumps({"strategy": "least_busy"}).encode(), headers=ADMIN)
    assert answer.status == 200 and json.loads(answer.body)["strategy"] == "least_busy"
    answer = await split("/dashboard/api/strategy", json.dumps({"strategy": "round_robin"}).encode(),
                         headers=DASHBOARD_ACTION)
    assert answer.status == 200 and json.loads(answer.body)["strategy"] == "round_robin"
    # WeChat cannot be reached here: the code got as far as asking it.
    answer = await split("/api/wechat/login", json.dumps({"code": "a-code-from-wx-login"}).encode())
    assert answer.status in (502, 503) and "WeChat" in answer.error()
    answer = await split("/dashboard/login", f"token={ADMIN_TOKEN}".encode(), "application/x-www-form-urlencoded")
    assert answer.status == 303 and answer.headers["location"] == "/dashboard"


async def test_a_form_field_split_across_segments_is_read_whole(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    photo = image_bytes()
    first = b'--b\r\nContent-Disposition: form-data; name="quality"\r\n\r\n9'
    rest = (b'0\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + photo + b"\r\n--b--\r\n")
    head = post_head("/api/v1/enhance", len(first) + len(rest), "multipart/form-data; boundary=b")
    answer = await exchange(port_of(gateway), head + first, rest, gap=0.3)
    assert answer.status == 200, answer.body
    task_id = json.loads(answer.body)["task_id"]
    detail = await (await gateway.client.get(f"/api/v1/admin/tasks/{task_id}", headers=ADMIN)).json()
    assert detail["task"]["params"]["quality"] == 90


async def test_wechat_notification_split_into_two_segments_is_accepted(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = FakeWechat(make_keys(tmp_path / "keys"))
    await fake.start()
    try:
        gw = Gateway(await aiohttp_client(create_app(wechat_config(tmp_path, fake))))
        token, _ = await login(gw, "split")
        no = (await create_order(gw, token))["out_trade_no"]
        fake.pay(no)
        headers, body = fake.notification(fake.transaction(no))
        url = notify_url(gw)
        assert url.startswith("http://127.0.0.1:")
        head = post_head("/api/wechat/pay/notify", len(body), headers.pop("Content-Type"), headers)
        answer = await exchange(port_of(gw), head + body[:20], body[20:], gap=0.3)
        assert answer.status == 204, answer.body
        assert (await user(gw, token))["credits"] >= 10
    finally:
        await fake.stop()


# -- item 6: stalled bodies -----------------------------------------------------------------------

STALLED = [  # (path, content type, headers): every route that reads a JSON or form body
    ("/webhook/register", "application/json", {}),
    ("/webhook/unregister", "application/json", {}),
    ("/dashboard/login", "application/x-www-form-urlencoded", {}),
    ("/api/wechat/login", "application/json", {}),
    ("/api/wechat/auth/openid", "application/json", {}),
    ("/api/v1/config/strategy", "application/json", ADMIN),
    ("/dashboard/api/strategy", "application/json", DASHBOARD_ACTION),
]


async def _stall(port: int, path: str, ctype: str, headers: dict[str, str]) -> tuple[Answer, float]:
    """Headers announcing 9000 bytes, then nothing: the answer, and seconds until the gateway closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        start = time.monotonic()
        writer.write(post_head(path, 9000, ctype, headers))
        await writer.drain()
        answer = await _read_answer(reader, 30)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the gateway
        return answer, time.monotonic() - start
    finally:
        writer.close()


async def test_a_stalled_body_is_answered_408_and_its_connection_closed(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{"limits.read_timeout": 1.0}, **_wechat_offline())
    port = port_of(gw)
    for path, ctype, headers in STALLED:
        answer, seconds = await _stall(port, path, ctype, headers)
        assert answer.status == 408 and "stalled for 1 s" in answer.error(), path
        assert answer.headers["connection"] == "close"
        assert seconds < 2.0, (path, seconds)  # read_timeout + 1 s
    # Answered before the body was read (no admin token): the rest is not waited for long either.
    answer, seconds = await _stall(port, "/api/v1/config/strategy", "application/json", {})
    assert answer.status == 401 and seconds < 2.0, seconds


async def test_600_stalled_connections_are_all_closed_within_read_timeout_plus_1s(make_gateway) -> None:  # type: ignore[no-untyped-def]
    """Acceptance 4: 600 connections that send headers (Content-Length: 9000) and no body."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # both ends of 600 connections live in this process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    gw = await make_gateway(**{"limits.read_timeout": 1.0}, **_wechat_offline())
    port = port_of(gw)
    count = 600

    async def one(i: int) -> tuple[int, float]:
        path, ctype, headers = STALLED[i % len(STALLED)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(post_head(path, 9000, ctype, headers))
            await writer.drain()
            sent = time.monotonic()
            received = b""
            while chunk := await asyncio.wait_for(reader.read(65536), 30):
                received += chunk
            return int(received.split(b" ", 2)[1]), time.monotonic() - sent
        finally:
            writer.close()

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 60)
    assert [status for status, _ in results] == [408] * count
    slowest = max(seconds for _, seconds in results)
    assert slowest < 2.0, slowest  # read_timeout + 1 s
    # And the gateway holds none of them: it serves the next client at once.
    assert (await gw.client.get("/api/v1/health")).status == 200


# -- item 8: multipart fields are counted ---------------------------------------------------------


async def test_multipart_fields_are_counted_against_a_budget(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    port = port_of(gateway)
    fields = b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(5000))
    photo = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
             b"Content-Type: image/png\r\n\r\n" + image_bytes() + b"\r\n--b--\r\n")
    body = fields + photo
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = await exchange(port, post_head("/api/v1/enhance", 0, "multipart/form-data; boundary=b", chunked=True)
                            + chunked)
    assert answer.status == 400 and "too many form fields" in answer.error()
    # Unnamed parts are read and counted too, and so is every byte of a field.
    unnamed = b'--b\r\nContent-Disposition: form-data\r\n\r\n' + b"y" * 5000 + b"\r\n" + photo
    answer = await exchange(port, post_head("/api/v1/enhance", len(unnamed), "multipart/form-data; boundary=b")
                            + unnamed)
    assert answer.status == 400 and "longer than 1024 bytes" in answer.error()
    assert not list(gateway.app[GATEWAY].blobs.inputs.iterdir())
    # A normal upload with the fields old clients send still works.
    assert await gateway.submit(tile_size="512", quality_level="high", quality="90", scale="2")


# -- the production path: the gateway as a process -------------------------------------------------


async def test_json_errors_and_closed_stalls_in_the_gateway_process(gateway_process) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_process("limits:\n  read_timeout: 1\n")
    gw.start()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
    answer = await exchange(gw.port, b"GET /api/v1/status/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 400 <= answer.status < 500 and "too long" in answer.error()
    answer, seconds = await _stall(gw.port, "/webhook/register", "application/json", {})
    assert answer.status == 408 and seconds < 2.0, seconds
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    body = b'{"ip": "203.0.113.9", "port": 9000, "secret": "%s"}' % SECRET.encode()
    writer.write(post_head("/webhook/unregister", len(body)) + body[:10])
    await writer.drain()
    await asyncio.sleep(0.3)  # the client's pause between two segments
    writer.write(body[10:])
    answer = await _read_answer(reader, 10)
    writer.close()
    assert answer.status == 404 and answer.error() == "no such server registered"
