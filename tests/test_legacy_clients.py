"""Issue 15, items 1, 2 and 4: the original gateway's clients work unchanged.

Written from the issue's description of those clients (``test_b_client.py``, the Vue web app),
not from their code: the request and answer shapes they rely on.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

from aiohttp import ClientResponse
from support import SECRET, FakeNode, Gateway, wait_until

ORIGINAL_FIELDS = ("url", "is_healthy", "fail_count", "last_check_time", "last_used_time")


async def _servers(gateway: Gateway) -> dict[str, dict[str, Any]]:
    """``test_b_client.py list``: ``GET /webhook/servers?secret=`` and each server's fields."""
    resp = await gateway.client.get(f"/webhook/servers?secret={SECRET}")
    body = await resp.json()
    assert resp.status == 200, body
    return {s["server_id"]: s for s in body["data"]["servers"]}


def _epoch(value: str) -> float:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value  # an ISO 8601 time with its zone
    return parsed.timestamp()


async def _error(resp: ClientResponse, status: int) -> dict[str, Any]:
    """What the web app shows: ``message`` (or ``detail``) of the error body, same as ``error``."""
    body = await resp.json()
    assert resp.status == status, body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["message"] == body["error"] and body["success"] is False, body
    return body


async def test_server_list_carries_the_original_fields(gateway: Gateway, nodes: Any) -> None:
    a, b = await nodes(), await nodes()
    # The original test client registers with a server_id of its own choosing: ignored.
    first = await gateway.register(a, server_id="B1")
    second = await gateway.register(b, server_id="GPU-001")
    assert (first["server_id"], second["server_id"]) == ("GPU-001", "GPU-002")

    async def checked() -> bool:
        return all(s["last_check_time"] is not None for s in (await _servers(gateway)).values())

    await wait_until(checked, 10, "a health check of both nodes")
    listed = await _servers(gateway)
    assert sorted(listed) == ["GPU-001", "GPU-002"]
    for node in (a, b):
        server = listed[str(node.server_id)]
        assert all(key in server for key in ORIGINAL_FIELDS), server
        assert server["url"] == f"http://127.0.0.1:{node.port}"
        assert server["is_healthy"] is True and server["fail_count"] == 0
        assert abs(_epoch(server["last_check_time"]) - time.time()) < 300
        assert server["last_used_time"] is None  # no job dispatched to it yet
        # photogate's own fields stay.
        assert server["healthy"] is True and server["address"] == f"127.0.0.1:{node.port}"

    before = time.time()
    task_id = await gateway.submit()
    done = await gateway.wait_done(task_id)
    assert done["status"] == "completed", done
    listed = await _servers(gateway)
    ran, idle = done["server_id"], ({"GPU-001", "GPU-002"} - {done["server_id"]}).pop()
    assert before - 1 <= _epoch(listed[ran]["last_used_time"]) <= time.time() + 1
    assert listed[idle]["last_used_time"] is None


async def test_unhealthy_node_shows_its_fail_count(gateway: Gateway, nodes: Any) -> None:
    node = await nodes()
    await gateway.register(node)
    await node.stop()  # its health checks now fail

    async def down() -> bool:
        server = (await _servers(gateway))["GPU-001"]
        return server["is_healthy"] is False and server["fail_count"] >= 3

    await wait_until(down, 15, "the stopped node to be marked unhealthy")
    server = (await _servers(gateway))["GPU-001"]
    assert server["is_healthy"] is False and server["status"] == "unhealthy"


async def test_unregister_of_a_made_up_server_id_is_404(gateway: Gateway, nodes: Any) -> None:
    node: FakeNode = await nodes()
    await gateway.register(node)
    # ``test_b_client.py unregister --server-id B1``: an id no gateway ever handed out.
    body = await _error(await gateway.client.post("/webhook/unregister", json={"server_id": "B1", "secret": SECRET}),
                        404)
    assert "no such server" in body["message"]
    # ... and with an address nothing registered from.
    await _error(await gateway.client.post("/webhook/unregister", json={
        "server_id": "B1", "ip": "127.0.0.1", "port": 1, "secret": SECRET}), 404)
    assert list(await _servers(gateway)) == ["GPU-001"]


async def test_every_error_body_carries_message(make_gateway: Any) -> None:
    gateway = await make_gateway(**{"rate_limit.exempt": [], "rate_limit.auth_failure_burst": 2})
    client = gateway.client
    # Domain errors (the error middleware).
    body = await _error(await client.get("/api/v1/status/no-such-task"), 404)
    assert "task" in body["message"]
    await _error(await client.post("/webhook/register", data=b"{not json",
                                   headers={"Content-Type": "application/json"}), 400)
    await _error(await client.post("/api/v1/config/multi-backend", json={"enabled": True}), 401)
    # aiohttp's own HTTP errors, rendered by the same middleware.
    await _error(await client.get("/no/such/path"), 404)
    await _error(await client.get("/webhook/register"), 405)
    # The rate limiter's own answer.
    statuses = []
    for _ in range(6):
        resp = await client.get("/webhook/servers?secret=wrong")
        statuses.append(resp.status)
        if resp.status == 429:
            await _error(resp, 429)
            break
        assert (await _error(resp, 403))["message"] == "wrong secret"
    assert statuses[-1] == 429, statuses


async def test_protocol_errors_carry_message(gateway: Gateway) -> None:
    """A request aiohttp cannot parse is answered before any middleware: same body."""
    server = gateway.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", head
    body = json.loads(payload)
    assert body["message"] == body["error"] and "too long" in body["message"], body


async def test_info_keeps_its_list_and_adds_the_original_dict(gateway: Gateway) -> None:
    resp = await gateway.client.get("/api/v1/info")
    body = await resp.json()
    assert resp.status == 200
    assert isinstance(body["endpoints"], list) and "POST /api/v1/enhance" in body["endpoints"]
    mapping = body["endpoint_map"]
    assert mapping["enhance"] == "/api/v1/enhance"
    assert mapping["status"] == "/api/v1/status/{task_id}"
    assert mapping["download"] == "/api/v1/download/{task_id}"
    assert mapping["webhook_servers"] == "/webhook/servers"
    # Every path in the dict is one the gateway serves.
    served = {e.split(" ", 1)[1] for e in body["endpoints"]}
    assert set(mapping.values()) <= served, set(mapping.values()) - served
