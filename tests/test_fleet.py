"""Registration, unregistration, listing and health of the fleet (webhook API)."""

from __future__ import annotations

import structlog
from support import SECRET, FakeNode, Gateway, wait_until

from photogate.keys import GATEWAY


async def test_three_nodes_get_sequential_ids_and_keep_them(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet = [await nodes() for _ in range(3)]
    answers = [await gateway.register(n) for n in fleet]
    assert [a["server_id"] for a in answers] == ["GPU-001", "GPU-002", "GPU-003"]
    assert answers[0]["message"] == "服务器 GPU-001 注册成功"
    assert answers[1]["ip"] == "127.0.0.1" and answers[1]["port"] == fleet[1].port
    assert all(len(a["node_token"]) >= 32 for a in answers)

    again = await gateway.register(fleet[1])
    assert again["server_id"] == "GPU-002"
    # Keyless: nobody can prove to be the node, so the token is rotated (issue 13, item 10).
    assert again["node_token"] != answers[1]["node_token"]

    resp = await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    data = (await resp.json())["data"]
    assert data["total_servers"] == 3 and data["healthy_servers"] == 3
    assert [s["server_id"] for s in data["servers"]] == ["GPU-001", "GPU-002", "GPU-003"]
    assert all("node_token" not in s for s in data["servers"])


async def test_ip_change_with_same_node_key_keeps_id(gateway: Gateway) -> None:
    first = await gateway.client.post("/webhook/register", json={
        "ip": "127.0.0.2", "port": 9001, "secret": SECRET, "node_key": "key-of-node-a"})
    assert (await first.json())["server_id"] == "GPU-001"
    moved = await gateway.client.post("/webhook/register", json={
        "ip": "127.0.0.3", "port": 9001, "secret": SECRET, "node_key": "key-of-node-a"})
    body = await moved.json()
    assert body["server_id"] == "GPU-001" and body["ip"] == "127.0.0.3"
    other = await gateway.client.post("/webhook/register", json={
        "ip": "127.0.0.2", "port": 9001, "secret": SECRET, "node_key": "key-of-node-b"})
    assert (await other.json())["server_id"] == "GPU-002"
    resp = await gateway.client.get(f"/webhook/servers?secret={SECRET}")
    servers = (await resp.json())["data"]["servers"]
    assert [(s["server_id"], s["ip"]) for s in servers] == [("GPU-001", "127.0.0.3"), ("GPU-002", "127.0.0.2")]


async def test_wrong_or_missing_secret_is_refused_and_audited(gateway: Gateway) -> None:
    with structlog.testing.capture_logs() as logs:
        wrong = await gateway.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 8000, "secret": "nope"})
        missing = await gateway.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 8000})
        listing = await gateway.client.get("/webhook/servers?secret=nope")
    assert wrong.status == 403 and (await wrong.json()) == {"success": False, "error": "wrong secret",
                                                          "message": "wrong secret"}
    assert missing.status == 401 and "secret" in (await missing.json())["error"]
    assert listing.status == 403
    refused = [e for e in logs if e["event"] == "audit" and e["action"] == "register_refused"]
    assert [e["reason"] for e in refused] == ["wrong secret", "missing secret"]
    assert all(e["client_ip"] == "127.0.0.1" for e in refused)
    assert "nope" not in repr(logs)  # the attempted secret is never logged
    resp = await gateway.client.get(f"/webhook/servers?secret={SECRET}")
    assert (await resp.json())["data"]["total_servers"] == 0


async def test_register_and_unregister_are_audited_without_the_secret(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    with structlog.testing.capture_logs() as logs:
        await gateway.register(node)
        resp = await gateway.client.post("/webhook/unregister", json={"ip": "127.0.0.1", "port": node.port,
                                                                      "secret": SECRET})
    assert resp.status == 200
    assert (await resp.json())["message"] == "服务器 GPU-001 注销成功"
    actions = [(e["action"], e["who"]) for e in logs if e["event"] == "audit"]
    assert actions == [("node_registered", "GPU-001"), ("node_unregistered", "GPU-001")]
    assert SECRET not in repr(logs) and node.token not in repr(logs)
    # Offline, not forgotten (DESIGN §9): still listed, and unregistering it again is no error.
    again = await gateway.client.post("/webhook/unregister", json={"server_id": "GPU-001", "secret": SECRET})
    assert again.status == 200
    listed = await (await gateway.client.get(f"/webhook/servers?secret={SECRET}")).json()
    assert [(s["server_id"], s["status"]) for s in listed["data"]["servers"]] == [("GPU-001", "offline")]
    unknown = await gateway.client.post("/webhook/unregister", json={"server_id": "GPU-009", "secret": SECRET})
    assert unknown.status == 404


async def test_bad_registration_bodies(gateway: Gateway) -> None:
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"ip": "not-an-ip", "port": 8000, "secret": "%s"}' % SECRET.encode(), 400, "ip"),
        (b'{"ip": "127.0.0.1", "port": 70000, "secret": "%s"}' % SECRET.encode(), 400, "port"),
        (b'{"ip": "127.0.0.1", "port": 0, "secret": "%s"}' % SECRET.encode(), 400, "port"),
    ]
    for body, status, word in cases:
        resp = await gateway.client.post("/webhook/register", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == status, body
        assert word in (await resp.json())["error"]


async def test_dead_node_marked_unhealthy_after_threshold_and_back_when_it_returns(
    gateway: Gateway, nodes  # type: ignore[no-untyped-def]
) -> None:
    node: FakeNode = await nodes()
    await gateway.register(node)

    async def healthy() -> bool | None:
        resp = await gateway.client.get(f"/webhook/servers?secret={SECRET}")
        return (await resp.json())["data"]["servers"][0]["healthy"]

    await node.stop()
    await wait_until(lambda: _failures(gateway) >= 1, 5, "a failed check")
    state = gateway.app[GATEWAY].registry.get("GPU-001")
    assert state is not None and state.failures < 3 and state.healthy  # one or two failures are not enough
    await wait_until(lambda: _failures(gateway) >= 3, 5, "three failed checks")
    assert await healthy() is False
    resp = await gateway.client.get("/api/v1/health")
    assert (await resp.json())["status"] == "degraded"
    await node.start()  # same port again
    await wait_until(healthy, 5, "the node to come back")
    resp = await gateway.client.get(f"/webhook/servers?secret={SECRET}")
    server = (await resp.json())["data"]["servers"][0]
    assert server["consecutive_failures"] == 0 and server["server_id"] == "GPU-001"


def _failures(gateway: Gateway) -> int:
    state = gateway.app[GATEWAY].registry.get("GPU-001")
    assert state is not None
    return state.failures


async def test_reregistering_without_slots_or_weight_keeps_them(gateway: Gateway) -> None:
    body = {"ip": "127.0.0.5", "port": 9000, "secret": SECRET}
    await gateway.client.post("/webhook/register", json={**body, "slots": 4, "weight": 3})
    await gateway.client.post("/webhook/register", json=body)  # the seed's plain form
    resp = await gateway.client.get(f"/webhook/servers?secret={SECRET}")
    server = (await resp.json())["data"]["servers"][0]
    assert (server["slots"], server["weight"]) == (4, 3)
