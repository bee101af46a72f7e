"""Issue 15 item 8: messages a person reads.

Every JSON answer is UTF-8 text without ``\\u`` escapes, and a 503 to an upload says why no
GPU server can take it (none registered, all draining, none healthy), in the words
``/api/v1/health`` uses."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import FormData
from support import REPO, Gateway, image_bytes, wait_until

UNAVAILABLE = "服务暂时不可用，请稍后重试"


async def _upload(gateway: Gateway) -> tuple[int, bytes, dict[str, str]]:
    form = FormData()
    form.add_field("file", image_bytes(), filename="x.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance", data=form)
    return resp.status, await resp.read(), dict(resp.headers)


def _readable(raw: bytes) -> Any:
    """The body is UTF-8 JSON with no ``\\u`` escape in it; returns it parsed."""
    assert b"\\u" not in raw, raw
    return json.loads(raw.decode("utf-8"))


async def _health(gateway: Gateway) -> dict[str, Any]:
    resp = await gateway.client.get("/api/v1/health")
    return _readable(await resp.read())


async def test_answers_are_utf8_without_escapes(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    status, raw, headers = await _upload(gateway)  # an error answer (the error middleware)
    assert status == 503
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert UNAVAILABLE.encode() in raw
    assert _readable(raw)["error"].startswith(UNAVAILABLE)

    node = await nodes(delay=0.3)
    await gateway.register(node)
    form = FormData()
    form.add_field("file", image_bytes(), filename="x.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance", data=form)  # a handler's own answer
    raw = await resp.read()
    assert resp.status == 200 and "任务已提交".encode() in raw
    task_id = _readable(raw)["task_id"]
    resp = await gateway.client.get(f"/api/v1/status/{task_id}")  # the cached status body
    raw = await resp.read()
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert _readable(raw)["message"] in ("任务排队中", "正在处理")
    assert any(m.encode() in raw for m in ("任务排队中", "正在处理"))
    await gateway.wait_done(task_id)
    raw = await (await gateway.client.get(f"/api/v1/status/{task_id}")).read()
    assert "处理完成".encode() in raw and _readable(raw)["status"] == "completed"


def test_a_lone_surrogate_stays_valid_json() -> None:
    """A client can send ``"\\ud800"`` in JSON; quoted back in an answer it has no UTF-8 form
    and stays the same escape (never a 500)."""
    from photogate.jsonbody import json_response

    resp = json_response({"error": "bad name '\ud800' 名字"})
    assert json.loads(resp.body) == {"error": "bad name '\ud800' 名字"}
    assert "名字".encode() in resp.body


def test_every_json_answer_goes_through_one_encoder() -> None:
    """One place encodes JSON answers (photogate.jsonbody, gpunode.jsonbody): a handler that
    called aiohttp's ``web.json_response`` would answer ``\\u`` escapes again."""
    offenders = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bweb\.json_response\(|dumps=json\.dumps", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


async def test_503_says_no_server_is_registered(gateway: Gateway) -> None:
    status, raw, headers = await _upload(gateway)
    error = _readable(raw)["error"]
    assert status == 503 and headers["Retry-After"]
    assert error == f"{UNAVAILABLE} (no GPU server is registered: uploads are refused until one registers)"
    health = await _health(gateway)
    assert health["status"] == "degraded"
    assert health["message"] == "no GPU server is registered: uploads are refused until one registers"


async def test_503_says_the_only_server_is_draining(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    resp = await gateway.client.post(f"/api/v1/admin/servers/{node.server_id}/drain",
                                     headers=gateway.admin_headers())
    assert resp.status == 200
    status, raw, _ = await _upload(gateway)
    reason = (f"every GPU server is draining ({node.server_id}): uploads are refused until an operator "
              "undrains one (photogate-admin undrain SERVER_ID)")
    assert status == 503
    assert _readable(raw)["error"] == f"{UNAVAILABLE} ({reason})"
    health = await _health(gateway)
    assert health["fleet"]["healthy"] == 1 and health["fleet"]["draining"] == 1
    assert health["message"] == reason


async def test_503_says_every_server_is_unhealthy(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    await node.stop()  # its health checks fail from now on

    async def down() -> bool:
        return (await _health(gateway))["fleet"]["healthy"] == 0

    await wait_until(down, 15, "the stopped node to be marked unhealthy")
    status, raw, _ = await _upload(gateway)
    reason = ("no healthy GPU server: all 1 registered fail their health checks; "
              "uploads are refused until one is up")
    assert status == 503
    assert _readable(raw)["error"] == f"{UNAVAILABLE} ({reason})"
    assert (await _health(gateway))["message"] == reason


async def test_503_names_unhealthy_and_draining_together(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    sick, drained = await nodes(), await nodes()
    await gateway.register(sick)
    await gateway.register(drained)
    resp = await gateway.client.post(f"/api/v1/admin/servers/{drained.server_id}/drain",
                                     headers=gateway.admin_headers())
    assert resp.status == 200
    await sick.stop()

    async def down() -> bool:
        return (await _health(gateway))["fleet"]["unhealthy"] == 1

    await wait_until(down, 15, "the stopped node to be marked unhealthy")
    status, raw, _ = await _upload(gateway)
    reason = ("no GPU server can take work: 1 unhealthy, 1 draining; "
              "uploads are refused until one is healthy again or undrained")
    assert status == 503 and _readable(raw)["error"] == f"{UNAVAILABLE} ({reason})"
    assert (await _health(gateway))["message"] == reason
