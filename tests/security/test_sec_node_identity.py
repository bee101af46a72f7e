"""Node identity and node addresses (issue 13, items 9 and 10).

Item 9: outside ``--dev`` a node may not register a loopback address unless the operator
lists a loopback network explicitly; IPv4 embedded in IPv6 (mapped, compatible, NAT64,
6to4, Teredo) is judged by the IPv4 inside; 0.0.0.0/8, broadcast, link-local (the cloud
metadata service), multicast and reserved addresses are always refused.

Item 10 (DESIGN §9 "Identity"): a leaked webhook secret may add nodes but never take over
an existing one: a caller without a node's ``node_key`` never receives its token, a key is
never replaced, an address held by a keyed node cannot be claimed by anyone else (409,
audited), on both backends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from support import SECRET, Gateway, make_config, wait_until

from gpunode.registration import Registrar, fixed_ip
from photogate.app import create_app
from photogate.config import load_config
from photogate.keys import GATEWAY

VICTIM_KEY = "victim-key-0123456789"
ATTACKER_KEY = "attacker-key-0123456789"




async def _post_register(gw: Gateway, body: dict[str, Any]) -> tuple[int, str]:
    resp = await gw.client.post("/webhook/register", json={"secret": SECRET, **body})
    return resp.status, await resp.text()


def _error(text: str) -> str:
    body = json.loads(text)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    return str(body["error"])


async def _servers(gw: Gateway) -> list[dict[str, Any]]:
    resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    assert resp.status == 200
    return list((await resp.json())["data"]["servers"])


def _refusals(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("action") == "register_refused"]


# -- item 9: node addresses -----------------------------------------------------------------


async def test_loopback_refused_outside_dev_with_the_default_networks(aiohttp_client: Any, tmp_path: Path,
                                                                      nodes: Any) -> None:
    """The production defaults (no --dev, allowed_node_networks anywhere): a loopback node
    is refused, in every spelling, and the gateway never probes that local port."""
    cfg = load_config(None, env={}, overrides={"webhook.secret": SECRET, "storage.data_dir": str(tmp_path / "d")})
    assert not cfg.dev
    gw = Gateway(await aiohttp_client(create_app(cfg)))
    local = await nodes()
    spellings = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1",
                 "2002:7f00:1::", "0:0:0:0:0:ffff:7f00:1"]
    with structlog.testing.capture_logs() as logs:
        for ip in spellings:
            status, text = await _post_register(gw, {"ip": ip, "port": local.port})
            assert status == 403, (ip, text)
            assert "loopback" in _error(text) and "--dev" in _error(text), text
    assert len(_refusals(logs)) == len(spellings)
    assert await _servers(gw) == []
    assert local.health_hits == 0


async def test_embedded_and_special_addresses_always_refused(aiohttp_client: Any, tmp_path: Path) -> None:
    """Even with loopback allowed (--dev) and the list open to everything."""
    cfg = load_config(None, env={}, dev=True, overrides={
        "webhook.secret": SECRET, "storage.data_dir": str(tmp_path / "d"),
        "webhook.allowed_node_networks": ["0.0.0.0/0", "::/0"]})
    gw = Gateway(await aiohttp_client(create_app(cfg)))
    refused = [
        "::169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::",
        "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client 169.254.169.254
        "169.254.169.254", "fe80::1", "0.0.0.0", "0.0.0.1", "::", "::ffff:0.0.0.1", "255.255.255.255",
        "240.0.0.1", "224.0.0.1", "ff02::1", "64:ff9b::e000:1",
    ]
    with structlog.testing.capture_logs() as logs:
        for ip in refused:
            status, text = await _post_register(gw, {"ip": ip, "port": 9000})
            assert status == 403, (ip, text)
            assert _error(text).startswith("ip: "), text
    assert len(_refusals(logs)) == len(refused)
    assert await _servers(gw) == []


async def test_the_allow_list_judges_the_embedded_ipv4(aiohttp_client: Any, tmp_path: Path) -> None:
    cfg = load_config(None, env={}, overrides={
        "webhook.secret": SECRET, "storage.data_dir": str(tmp_path / "d"),
        "webhook.allowed_node_networks": ["203.0.113.0/24", "::/0"]})
    gw = Gateway(await aiohttp_client(create_app(cfg)))
    # The IPv6 wildcard does not let an IPv4 address outside the list in through IPv6 spellings.
    for ip in ("::ffff:198.51.100.1", "64:ff9b::c633:6401", "2002:c633:6401::1", "::198.51.100.1"):
        status, text = await _post_register(gw, {"ip": ip, "port": 9000})
        assert status == 403 and "allowed_node_networks" in _error(text), (ip, text)
    # The IPv4-mapped spelling of an allowed address is stored as that address.
    status, text = await _post_register(gw, {"ip": "::ffff:203.0.113.9", "port": 9000})
    assert status == 200, text
    assert json.loads(text)["ip"] == "203.0.113.9"
    status, text = await _post_register(gw, {"ip": "2001:db8::5", "port": 9000})
    assert status == 200, text


async def test_an_explicitly_listed_loopback_network_is_allowed(aiohttp_client: Any, tmp_path: Path,
                                                                nodes: Any) -> None:
    cfg = load_config(None, env={}, overrides={
        "webhook.secret": SECRET, "storage.data_dir": str(tmp_path / "d"),
        "webhook.allowed_node_networks": ["127.0.0.1/32"]})
    gw = Gateway(await aiohttp_client(create_app(cfg)))
    local = await nodes()
    assert (await gw.register(local))["server_id"] == "GPU-001"
    status, text = await _post_register(gw, {"ip": "127.0.0.2", "port": local.port})
    assert status == 403, text


# -- item 10: node identity ---------------------------------------------------------------


async def test_keyless_registration_of_a_keyed_node_gets_409_not_its_token(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway()
    victim = await nodes()
    body = await gw.register(victim, node_key=VICTIM_KEY)
    token = body["node_token"]
    with structlog.testing.capture_logs() as logs:
        for ip in ("127.0.0.1", "::ffff:127.0.0.1"):  # the mapped spelling is the same address
            status, text = await _post_register(gw, {"ip": ip, "port": victim.port})
            assert status == 409, (ip, text)
            assert token not in text
            assert "node_key" in _error(text) and "photogate-admin remove GPU-001" in _error(text)
    refusals = _refusals(logs)
    assert [(e["server_id"], e["reason"]) for e in refusals] == [("GPU-001", "address held by a keyed node")] * 2
    # The victim keeps its id and its token: the next photo reaches it with that token.
    task_id = await gw.submit()
    final = await gw.wait_done(task_id)
    assert (final["status"], final["server_id"]) == ("completed", "GPU-001")
    assert victim.seen_tokens == [f"Bearer {token}"]


async def test_a_leaked_secret_cannot_replace_a_key_or_move_an_id(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    """The issue's takeover story: an attacker key on the victim's address, then that key
    from the attacker's own address. The victim keeps GPU-001; the attacker is a new node."""
    gw = await start_gateway()
    victim, attacker = await nodes(), await nodes()
    token = (await gw.register(victim, node_key=VICTIM_KEY))["node_token"]
    status, text = await _post_register(gw, {"ip": "127.0.0.1", "port": victim.port, "node_key": ATTACKER_KEY})
    assert status == 409, text
    assert token not in text and "photogate-admin remove GPU-001" in _error(text)
    # The attacker's key was not attached to GPU-001: from its own address it is a new node.
    added = await gw.register(attacker, node_key=ATTACKER_KEY)
    assert added["server_id"] == "GPU-002" and added["node_token"] != token
    # The real node re-registers: same id, same token, same address.
    again = await gw.register(victim, node_key=VICTIM_KEY)
    assert (again["server_id"], again["node_token"]) == ("GPU-001", token)
    assert [(s["server_id"], s["port"]) for s in await _servers(gw)] == [("GPU-001", victim.port),
                                                                        ("GPU-002", attacker.port)]
    task_id = await gw.submit()  # multi-backend off: the primary, GPU-001
    assert (await gw.wait_done(task_id))["server_id"] == "GPU-001"
    assert victim.seen_tokens == [f"Bearer {token}"] and attacker.seen_tokens == []


async def test_a_keyed_node_cannot_move_onto_another_nodes_address(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway()
    victim, attacker = await nodes(), await nodes()
    token = (await gw.register(victim, node_key=VICTIM_KEY))["node_token"]
    await gw.register(attacker, node_key=ATTACKER_KEY)
    with structlog.testing.capture_logs() as logs:
        status, text = await _post_register(gw, {"ip": "127.0.0.1", "port": victim.port, "node_key": ATTACKER_KEY})
    assert status == 409, text
    assert token not in text and "GPU-001" in _error(text)
    assert [e["server_id"] for e in _refusals(logs)] == ["GPU-001"]
    assert [(s["server_id"], s["port"]) for s in await _servers(gw)] == [("GPU-001", victim.port),
                                                                        ("GPU-002", attacker.port)]


async def test_a_node_that_lost_its_key_is_told_to_have_the_old_id_removed(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway()
    node = await nodes()
    await gw.register(node, node_key=VICTIM_KEY)
    status, text = await _post_register(gw, {"ip": "127.0.0.1", "port": node.port, "node_key": "fresh-key-after-wipe"})
    assert status == 409 and "photogate-admin remove GPU-001" in _error(text), text
    resp = await gw.client.delete("/api/v1/admin/servers/GPU-001", headers=gw.admin_headers())
    assert resp.status == 200
    body = await gw.register(node, node_key="fresh-key-after-wipe")
    assert body["server_id"] == "GPU-002"
    task_id = await gw.submit()
    assert (await gw.wait_done(task_id))["status"] == "completed"


async def test_keyless_reregistration_keeps_the_id_and_rotates_the_token(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    """Seed-style ``{ip, port, secret}``: nobody can prove to be the node, so a caller gets
    the same id but never the token the node was using."""
    gw = await start_gateway()
    node = await nodes()
    first = await gw.register(node)
    second = await gw.register(node)
    assert second["server_id"] == first["server_id"] == "GPU-001"
    assert second["node_token"] != first["node_token"]
    task_id = await gw.submit()
    assert (await gw.wait_done(task_id))["status"] == "completed"
    assert node.seen_tokens == [f"Bearer {second['node_token']}"]


async def test_a_key_claims_a_keyless_address_once(start_gateway: Callable[..., Awaitable[Gateway]],
                                                   nodes: Any) -> None:
    """An operator registered the address by hand; the node then registers with its key: the
    same id, a token the hand registration never saw, and the address is the key's from then on."""
    gw = await start_gateway()
    node = await nodes()
    by_hand = await gw.register(node)
    keyed = await gw.register(node, node_key=VICTIM_KEY)
    assert keyed["server_id"] == by_hand["server_id"] == "GPU-001"
    assert keyed["node_token"] != by_hand["node_token"]
    status, text = await _post_register(gw, {"ip": "127.0.0.1", "port": node.port})
    assert status == 409 and keyed["node_token"] not in text, text
    status, text = await _post_register(gw, {"ip": "127.0.0.1", "port": node.port, "node_key": ATTACKER_KEY})
    assert status == 409 and keyed["node_token"] not in text, text
    assert (await gw.register(node, node_key=VICTIM_KEY))["node_token"] == keyed["node_token"]


async def test_gpunode_reports_a_conflict_and_registers_once_the_old_id_is_removed(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway()
    node = await nodes()
    await gw.register(node, node_key=VICTIM_KEY)
    async with aiohttp.ClientSession() as session:
        registrar = Registrar(session, gateway_url=str(gw.client.make_url("")), secret=SECRET, port=node.port,
                              node_key="wiped-state-new-key", ip_source=fixed_ip("127.0.0.1"), slots=1,
                              model="fake", scale=2, backoff_initial=0.05, backoff_max=0.2)
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(registrar.register_until_success())
            try:
                await wait_until(lambda: any(e.get("event") == "register_conflict" for e in logs), 10,
                                 "the node to log the conflict")
                assert not registrar.registered.is_set() and registrar.server_id is None
                conflict = next(e for e in logs if e.get("event") == "register_conflict")
                assert conflict["log_level"] == "error" and "photogate-admin remove GPU-001" in conflict["error"]
                resp = await gw.client.delete("/api/v1/admin/servers/GPU-001", headers=gw.admin_headers())
                assert resp.status == 200
                await asyncio.wait_for(task, 10)
            finally:
                task.cancel()
    assert registrar.server_id == "GPU-002"


async def test_racing_claims_on_one_address_leave_one_owner(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    """Ten keys registering one new address at once (two gateways on Redis): the rule is
    applied atomically, so one key owns it and the nine others get 409."""
    a = await start_gateway()
    b = await start_gateway()
    node = await nodes()

    async def claim(i: int) -> tuple[int, str]:
        return await _post_register((a, b)[i % 2], {"ip": "127.0.0.1", "port": node.port,
                                                     "node_key": f"racing-key-{i:04d}"})

    answers = await asyncio.gather(*(claim(i) for i in range(10)))
    assert sorted(status for status, _ in answers) == [200] + [409] * 9, answers
    won = next(i for i, (status, _) in enumerate(answers) if status == 200)
    winner = json.loads(answers[won][1])
    assert winner["server_id"] == "GPU-001"
    assert all(winner["node_token"] not in text for status, text in answers if status == 409)
    # Listed by the gateway that registered it (the other one learns of it at its next
    # refresh of the shared registry on Redis; never, for a second gateway on one SQLite file).
    assert [s["server_id"] for s in await _servers((a, b)[won % 2])] == ["GPU-001"]


async def test_a_rotated_token_reaches_every_gateway(aiohttp_client: Any, tmp_path: Path,
                                                     redis_config: dict[str, Any], nodes: Any) -> None:
    """Keyless re-registration through gateway A rotates the token; gateway B then sends
    photos with the new token only."""
    a = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    b = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    node = await nodes()
    first = await b.register(node)
    second = await a.register(node)
    assert second["server_id"] == first["server_id"] and second["node_token"] != first["node_token"]
    # B learns the new token at its next refresh of the shared registry (until then its
    # dispatch would meet the node's 401 and be retried).
    registry = b.app[GATEWAY].registry
    await wait_until(lambda: registry.get("GPU-001").record.node_token == second["node_token"], 10,
                     "gateway B to see the rotated token")
    task_id = await b.submit()
    assert (await b.wait_done(task_id))["status"] == "completed"
    assert node.seen_tokens == [f"Bearer {second['node_token']}"]


async def test_the_secret_alone_cannot_unregister_a_keyed_node(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    """Unregistering a keyed node with the webhook secret alone would let a secret holder
    delete it and then claim its address with a key of their own: it needs the node's key."""
    gw = await start_gateway()
    victim = await nodes()
    await gw.register(victim, node_key=VICTIM_KEY)
    for extra in ({}, {"node_key": ATTACKER_KEY}, {"server_id": "GPU-001"}):
        resp = await gw.client.post("/webhook/unregister",
                                    json={"secret": SECRET, "ip": "127.0.0.1", "port": victim.port, **extra})
        assert resp.status == 403, await resp.text()
        assert "photogate-admin remove GPU-001" in _error(await resp.text())
    assert [s["server_id"] for s in await _servers(gw)] == ["GPU-001"]
    status, text = await _post_register(gw, {"ip": "127.0.0.1", "port": victim.port, "node_key": ATTACKER_KEY})
    assert status == 409, text
    # The node itself, with its key, still leaves the fleet.
    resp = await gw.client.post("/webhook/unregister", json={"secret": SECRET, "ip": "127.0.0.1",
                                                             "port": victim.port, "node_key": VICTIM_KEY})
    assert resp.status == 200, await resp.text()
    # Offline, not forgotten: the address still needs the key.
    assert [(s["server_id"], s["status"]) for s in await _servers(gw)] == [("GPU-001", "offline")]
    status, text = await _post_register(gw, {"ip": "127.0.0.1", "port": victim.port, "node_key": ATTACKER_KEY})
    assert status == 409, text
