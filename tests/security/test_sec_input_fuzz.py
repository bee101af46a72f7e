"""Acceptance 2 of issue 13: no request without credentials gets a 500 or a traceback, on EVERY
route (enumerated from the app's router, so a new route is covered without editing this file):
nesting depth, unicode digits in every number, oversize headers and request lines, bodies in
two segments (answered exactly as the same body in one piece) and stalled bodies (408, closed)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Gateway, free_port, make_config, read_http_answer

from photogate.app import create_app

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
READ_TIMEOUT = 0.5
#: Every name a route reads a number from, in a query string, a form or a JSON body.
NUMBER_FIELDS = ("port", "slots", "weight", "limit", "quality", "scale", "wait", "tile_size", "expires_in",
                 "amount", "total", "timestamp", "page")
#: Pages for a browser: their own refusals are HTML (the login page), everything else is JSON.
PAGES = {("GET", "/dashboard"), ("POST", "/dashboard/login")}
#: Path parameters that a route's pattern restricts.
FIXED_PARAMS = {"action": "drain"}
NOTIFY = "/api/wechat/pay/notify"  # WeChat's own error shape: {"code": "FAIL", "message": ...}


@pytest.fixture(params=["open", "wechat"])
async def gw(request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Any, nodes: Any) -> Gateway:
    """The open API with a node up (uploads get parsed), or WeChat login on (its routes exist)."""
    wechat = {"wechat.appid": "wx0123456789abcdef", "wechat.secret": "s" * 32, "wechat.login_enabled": True,
              "wechat.timeout": 1.0, "wechat.api_base": f"http://127.0.0.1:{free_port()}"}
    extra = wechat if request.param == "wechat" else {}
    cfg = make_config(tmp_path, **{"limits.read_timeout": READ_TIMEOUT, **extra})
    gateway = Gateway(await aiohttp_client(create_app(cfg)))
    if request.param == "open":
        await gateway.register(await nodes())
    return gateway


def routes(gw: Gateway, fill: str = "x") -> list[tuple[str, str]]:
    """(method, concrete path) for every route the gateway serves, HEAD aside (no body to check)."""
    found = set()
    for route in gw.app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        info = route.resource.get_info()
        if "directory" in info:  # static files
            path = info["prefix"] + "/" + fill
        elif "formatter" in info:
            path = re.sub(r"\{(\w+)\}", lambda m: FIXED_PARAMS.get(m.group(1), fill), info["formatter"])
        else:
            path = info["path"]
        found.add((route.method, path))
    assert len(found) > 30  # the whole API and the dashboard
    return sorted(found)


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def check(self, method: str, path: str) -> None:
        """Never a 500, never a traceback; every refusal a JSON error (pages: their login page)."""
        where = (method, path, self.status, self.body[:200])
        assert self.status < 500 or (path.startswith("/api/wechat/") and self.status in (502, 503)), where
        assert b"Traceback" not in self.body and b'File "' not in self.body, where
        if self.status < 400:
            return
        ctype = self.headers.get("content-type", "")
        if (method, path) in PAGES and ctype.startswith("text/html"):
            assert self.status in (401, 403) and b"<form" in self.body, where
            return
        assert ctype.startswith("application/json"), where
        data = json.loads(self.body)
        wechat_fail = path == NOTIFY and data.get("code") == "FAIL" and isinstance(data.get("message"), str)
        assert wechat_fail or (isinstance(data.get("error"), str) and data["error"]), where


async def _read_answer(reader: asyncio.StreamReader, timeout: float) -> Answer:
    return Answer(*await read_http_answer(reader, timeout))


def request(method: str, target: str, body: bytes = b"", ctype: str = "application/json",
            headers: dict[str, str] | None = None, length: int | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {ctype}",
             f"Content-Length: {len(body) if length is None else length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


async def send(gw: Gateway, *parts: bytes, gap: float = 0.0, timeout: float = 15.0) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.server.port)
    try:
        for i, part in enumerate(parts):
            if i and gap:
                await asyncio.sleep(gap)  # the client's pause between two TCP segments
            writer.write(part)
            await writer.drain()
        return await _read_answer(reader, timeout)
    finally:
        writer.close()


def content_type(method: str, path: str) -> str:
    if path == "/dashboard/login":
        return "application/x-www-form-urlencoded"
    if path == "/api/v1/enhance":
        return "multipart/form-data; boundary=b"
    return "application/json"


def nested(depth: int, opening: str) -> str:
    if opening == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# -- nesting depth -------------------------------------------------------------------------------


@SETTINGS
@given(depth=st.integers(33, 20_000), opening=st.sampled_from("[{"), wrapped=st.booleans())
async def test_deep_nesting_on_every_route(gw: Gateway, depth: int, opening: str, wrapped: bool) -> None:
    doc = nested(depth, opening)
    body = (f'{{"port": 1, "code": "c", "strategy": "x", "x": {doc}}}' if wrapped else doc).encode()
    answers = await asyncio.gather(*(send(gw, request(m, p, body, content_type(m, p))) for m, p in routes(gw)))
    for (method, path), answer in zip(routes(gw), answers):
        answer.check(method, path)


# -- unicode digits ------------------------------------------------------------------------------

# Digits that str.isdigit() accepts and ASCII does not: superscripts, Arabic-Indic, full-width...
UNICODE_DIGITS = st.text(alphabet=st.characters(categories=["Nd", "No"], exclude_characters="0123456789"),
                         min_size=1, max_size=4)


@SETTINGS
@given(digits=UNICODE_DIGITS, ascii_prefix=st.sampled_from(["", "1", "-"]))
async def test_unicode_digits_in_every_number_on_every_route(gw: Gateway, digits: str, ascii_prefix: str) -> None:
    value = ascii_prefix + digits
    query = "&".join(f"{name}={quote(value)}" for name in NUMBER_FIELDS)
    doc = json.dumps({name: value for name in NUMBER_FIELDS} | {"ip": "203.0.113.9", "code": value,
                                                               "strategy": value}).encode()
    form = "".join(f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                   for name in NUMBER_FIELDS).encode() + b"--b--\r\n"
    pairs = routes(gw, fill=quote(value))

    def body(method: str, path: str) -> bytes:
        if path == "/api/v1/enhance":
            return form
        if path == "/dashboard/login":
            return query.encode()
        return doc

    answers = await asyncio.gather(*(send(gw, request(m, f"{p}?{query}", body(m, p), content_type(m, p)))
                                     for m, p in pairs))
    for (method, path), answer in zip(pairs, answers):
        answer.check(method, path)


# -- oversize headers and request lines ----------------------------------------------------------


@SETTINGS
@given(size=st.integers(8_200, 60_000), where=st.sampled_from(["header value", "header name", "path", "query"]))
async def test_oversize_headers_on_every_route(gw: Gateway, size: int, where: str) -> None:
    big = "h" * size

    def raw(method: str, path: str) -> bytes:
        if where == "header value":
            return request(method, path, headers={"X-Big": big})
        if where == "header name":
            return request(method, path, headers={"X-" + big: "1"})
        if where == "path":
            return request(method, path.rstrip("/") + "/" + big)
        return request(method, f"{path}?q={big}")

    pairs = routes(gw)
    answers = await asyncio.gather(*(send(gw, raw(m, p)) for m, p in pairs))
    for (method, path), answer in zip(pairs, answers):
        answer.check(method, path)
        assert answer.status == 400 and "too long" in json.loads(answer.body)["error"], (method, path)


# -- bodies in two segments ----------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)
BODIES = st.fixed_dictionaries({}, optional={
    "ip": st.sampled_from(["203.0.113.9", "::1", "x"]), "port": st.integers(-5, 70_000), "secret": st.text(max_size=12),
    "code": st.text(min_size=1, max_size=12), "strategy": st.sampled_from(["least_busy", "nope"]),
    "enabled": st.booleans(), "product": st.text(max_size=8), "token": st.text(max_size=12), "extra": JSON_VALUES,
})


@SETTINGS
@given(doc=BODIES, cut=st.integers(1, 200), gap=st.sampled_from([0.05, 0.2]))
async def test_a_body_in_two_segments_is_answered_as_the_whole(gw: Gateway, doc: dict[str, Any], cut: int,
                                                               gap: float) -> None:
    pairs = [(m, p) for m, p in routes(gw) if m in ("POST", "DELETE")]

    def body(path: str) -> bytes:
        if path == "/dashboard/login":
            return f"token={doc.get('token', '')}".encode()
        if path == "/api/v1/enhance":
            return (b'--b\r\nContent-Disposition: form-data; name="quality"\r\n\r\n90\r\n--b--\r\n')
        return json.dumps(doc).encode()

    def whole(m: str, p: str) -> bytes:
        return request(m, p, body(p), content_type(m, p))

    def halves(m: str, p: str) -> tuple[bytes, bytes]:
        raw = whole(m, p)
        at = raw.index(b"\r\n\r\n") + 4 + min(cut, len(body(p)) - 1)
        return raw[:at], raw[at:]

    at_once = await asyncio.gather(*(send(gw, whole(m, p)) for m, p in pairs))
    in_two = await asyncio.gather(*(send(gw, *halves(m, p), gap=gap) for m, p in pairs))
    for (method, path), one, two in zip(pairs, at_once, in_two):
        two.check(method, path)
        assert (two.status, two.body if two.status >= 400 else b"") == (one.status, one.body if one.status >= 400
                                                                        else b""), (method, path)


# -- stalled bodies ------------------------------------------------------------------------------


@SETTINGS
@given(sent=st.integers(0, 20), announced=st.integers(100, 50_000))
async def test_a_stalled_body_on_every_route_is_answered_and_closed(gw: Gateway, sent: int, announced: int) -> None:
    pairs = routes(gw)

    async def stall(method: str, path: str) -> tuple[Answer, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.server.port)
        try:
            writer.write(request(method, path, b"{" * sent, content_type(method, path), length=announced))
            await writer.drain()
            start = time.monotonic()
            answer = await _read_answer(reader, 15)
            assert await asyncio.wait_for(reader.read(), 15) == b""  # the gateway closed it
            return answer, time.monotonic() - start
        finally:
            writer.close()

    results = await asyncio.gather(*(stall(m, p) for m, p in pairs))
    for (method, path), (answer, seconds) in zip(pairs, results):
        answer.check(method, path)
        assert seconds < READ_TIMEOUT + 5, (method, path, seconds)  # a generous guard over read_timeout
