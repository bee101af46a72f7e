"""Issue 15 item 5 (DESIGN §9 "Identity"): an unregistered node is offline, not forgotten.

``systemctl restart gpunode`` (SIGTERM: unregister; start again with the same
``--state-dir``) keeps the node's id, whatever registered in between and across a restart
of the gateway; an offline node gets no work and no health probes and is listed as
``offline``; only an operator's ``remove`` forgets it. On both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData
from support import SECRET, Gateway, image_bytes, make_config, reported_port, wait_until

from gpunode.registration import Registrar, fixed_ip
from photogate.app import create_app
from photogate.keys import GATEWAY

KEY = "offline-node-key-0123456789"




class NodeProcs:
    """Real ``gpunode --simulate`` processes on port 0; each killed by its own pid at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, name: str, gateway_url: str) -> tuple[subprocess.Popen[bytes], int]:
        """Start node ``name`` (state dir ``state-<name>``, kept across its restarts) and
        answer the process and the port it bound."""
        log = self.workdir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        argv = [sys.executable, "-m", "gpunode", "--simulate", "--speed", "0.002", "--host", "127.0.0.1",
                "--advertise-ip", "127.0.0.1", "--port", "0", "--state-dir", str(self.workdir / f"state-{name}"),
                "--gateway", gateway_url, "--secret", SECRET, "--register-backoff-max", "0.5",
                "--gateway-check-interval", "0"]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        found: list[int] = []

        def reported() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            port = reported_port(log, "starting", offset)
            found.extend([port] if port else [])
            return bool(found)

        await wait_until(reported, 60, f"gpunode {name} to report its port")
        return proc, found[0]

    @staticmethod
    async def stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM (what systemd sends): the node unregisters and exits 0."""
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.poll() is not None, 30, "gpunode to exit on SIGTERM")
        assert proc.returncode == 0

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def node_procs(tmp_path: Path) -> Iterator[NodeProcs]:
    procs = NodeProcs(tmp_path)
    yield procs
    procs.kill_all()


def _url(gw: Gateway) -> str:
    return str(gw.client.make_url("")).rstrip("/")


async def _servers(gw: Gateway) -> list[dict[str, Any]]:
    resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    assert resp.status == 200
    return list((await resp.json())["data"]["servers"])


async def _listed(gw: Gateway) -> list[tuple[str, int, str]]:
    return [(s["server_id"], s["port"], s["status"]) for s in await _servers(gw)]


async def _wait_listed(gw: Gateway, expected: list[tuple[str, int, str]], what: str) -> None:
    seen: list[Any] = []

    async def listed() -> bool:
        seen[:] = await _listed(gw)
        return seen == expected

    try:
        await wait_until(listed, 30, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; listed: {seen}, expected: {expected}") from None


async def test_a_clean_restart_keeps_the_id_whatever_registered_between(
        start_gateway: Callable[..., Awaitable[Gateway]], node_procs: NodeProcs) -> None:
    gw = await start_gateway()
    a, port_a = await node_procs.start("a", _url(gw))
    await _wait_listed(gw, [("GPU-001", port_a, "healthy")], "node a to register")
    await node_procs.stop(a)
    # Offline, not forgotten.
    await _wait_listed(gw, [("GPU-001", port_a, "offline")], "node a to be offline")
    b, port_b = await node_procs.start("b", _url(gw))
    await _wait_listed(gw, [("GPU-001", port_a, "offline"), ("GPU-002", port_b, "healthy")], "node b to register")
    # ``systemctl restart``: the same state dir (its node_key), here also a new port.
    a, port_a2 = await node_procs.start("a", _url(gw))
    await _wait_listed(gw, [("GPU-001", port_a2, "healthy"), ("GPU-002", port_b, "healthy")],
                       "node a to come back as GPU-001")
    task_id = await gw.submit()  # multi-backend off: the primary, GPU-001, serves again
    assert ((await gw.wait_done(task_id, 30))["status"], (await gw.status(task_id))["server_id"]) == (
        "completed", "GPU-001")
    # Restarted twice in a row: still GPU-001.
    await node_procs.stop(a)
    await _wait_listed(gw, [("GPU-001", port_a2, "offline"), ("GPU-002", port_b, "healthy")], "a offline again")
    a, port_a3 = await node_procs.start("a", _url(gw))
    await _wait_listed(gw, [("GPU-001", port_a3, "healthy"), ("GPU-002", port_b, "healthy")], "a back again")


async def test_remove_forgets_an_offline_node(start_gateway: Callable[..., Awaitable[Gateway]],
                                              node_procs: NodeProcs) -> None:
    gw = await start_gateway()
    a, port = await node_procs.start("a", _url(gw))
    await _wait_listed(gw, [("GPU-001", port, "healthy")], "node a to register")
    await node_procs.stop(a)
    await _wait_listed(gw, [("GPU-001", port, "offline")], "node a to be offline")
    resp = await gw.client.delete("/api/v1/admin/servers/GPU-001", headers=gw.admin_headers())
    assert resp.status == 200, await resp.text()
    assert await _servers(gw) == []
    a, port = await node_procs.start("a", _url(gw))
    await _wait_listed(gw, [("GPU-002", port, "healthy")], "node a to register as a new id")


async def test_the_offline_node_and_its_id_survive_a_gateway_restart(
        start_gateway: Callable[..., Awaitable[Gateway]], node_procs: NodeProcs) -> None:
    gw = await start_gateway()
    a, port = await node_procs.start("a", _url(gw))
    await _wait_listed(gw, [("GPU-001", port, "healthy")], "node a to register")
    await node_procs.stop(a)
    await _wait_listed(gw, [("GPU-001", port, "offline")], "node a to be offline")
    await gw.client.close()
    gw = await start_gateway()
    assert await _listed(gw) == [("GPU-001", port, "offline")]
    a, port = await node_procs.start("a", _url(gw))
    await _wait_listed(gw, [("GPU-001", port, "healthy")], "node a to come back as GPU-001")


async def test_an_offline_node_gets_no_work_and_no_probes_and_comes_back(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    """Fake nodes that stay up after unregistering: nothing reaches them while offline; the
    views (servers, dashboard, metrics, health) say offline; re-registering brings the same
    id back: a keyed node with its key from another address, a keyless one from its address
    (with a new token, as for any keyless re-registration)."""
    gw = await start_gateway()
    keyed, keyless, elsewhere = await nodes(), await nodes(), await nodes()
    await gw.register(keyed, node_key=KEY)
    first = await gw.register(keyless)
    assert (keyed.server_id, keyless.server_id) == ("GPU-001", "GPU-002")
    for body in ({"ip": "127.0.0.1", "port": keyed.port, "node_key": KEY},
                 {"ip": "127.0.0.1", "port": keyless.port}):
        resp = await gw.client.post("/webhook/unregister", json={"secret": SECRET, **body})
        assert resp.status == 200, await resp.text()
    servers = await _servers(gw)
    assert [(s["server_id"], s["status"], s["healthy"]) for s in servers] == [
        ("GPU-001", "offline", False), ("GPU-002", "offline", False)]
    state = await (await gw.client.get("/dashboard/state", headers=gw.admin_headers())).json()
    assert [(n["server_id"], n["status"]) for n in state["nodes"]] == [("GPU-001", "offline"), ("GPU-002", "offline")]
    assert state["summary"]["offline"] == 2 and state["summary"]["healthy"] == 0
    metrics = await (await gw.client.get("/metrics", headers=gw.admin_headers())).text()
    assert 'photogate_node_offline{server_id="GPU-001"} 1.0' in metrics
    assert 'photogate_node_offline{server_id="GPU-002"} 1.0' in metrics
    # No work: nothing can take a photo now.
    form = FormData()
    form.add_field("file", image_bytes(), filename="photo.png", content_type="image/png")
    form_resp = await gw.client.post("/api/v1/enhance", data=form)
    assert form_resp.status == 503, await form_resp.text()
    # No probes: three more health rounds, no hit on either node.
    hits = (keyed.health_hits, keyless.health_hits)
    monitor = gw.app[GATEWAY].monitor
    rounds = monitor.rounds
    await wait_until(lambda: monitor.rounds >= rounds + 3, 20, "three health rounds")
    assert (keyed.health_hits, keyless.health_hits) == hits
    # Back: the key from another address gets GPU-001 again; the keyless node from its address GPU-002.
    assert (await gw.register(elsewhere, node_key=KEY))["server_id"] == "GPU-001"
    again = await gw.register(keyless)
    assert again["server_id"] == "GPU-002" and again["node_token"] != first["node_token"]
    assert [(s["server_id"], s["port"], s["status"]) for s in await _servers(gw)] == [
        ("GPU-001", elsewhere.port, "healthy"), ("GPU-002", keyless.port, "healthy")]
    task_id = await gw.submit()
    assert (await gw.wait_done(task_id))["status"] == "completed"
    assert keyed.jobs == 0 and elsewhere.jobs == 1


async def test_an_offline_keyed_address_still_needs_its_key(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    """Offline is not forgotten: the address of an offline keyed node cannot be claimed without
    its key (as while online); an offline keyless node's address can, as it always could."""
    gw = await start_gateway()
    keyed, keyless = await nodes(), await nodes()
    await gw.register(keyed, node_key=KEY)
    await gw.register(keyless)
    for body in ({"ip": "127.0.0.1", "port": keyed.port, "node_key": KEY},
                 {"ip": "127.0.0.1", "port": keyless.port}):
        resp = await gw.client.post("/webhook/unregister", json={"secret": SECRET, **body})
        assert resp.status == 200, await resp.text()
    for extra in ({}, {"node_key": "another-key-0123456789"}):
        resp = await gw.client.post("/webhook/register", json={"secret": SECRET, "ip": "127.0.0.1",
                                                               "port": keyed.port, **extra})
        assert resp.status == 409, await resp.text()
        assert "photogate-admin remove GPU-001" in (await resp.json())["error"]
    claimed = await gw.register(keyless, node_key="another-key-0123456789")
    assert claimed["server_id"] == "GPU-002"
    assert [(s["server_id"], s["status"]) for s in await _servers(gw)] == [("GPU-001", "offline"),
                                                                          ("GPU-002", "healthy")]


async def test_a_running_node_listed_offline_registers_again(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    """A node still running whose id someone unregistered (with its key) sees itself listed
    offline at its next gateway check, and registers again: same id, online."""
    gw = await start_gateway()
    node = await nodes()
    async with aiohttp.ClientSession() as session:
        registrar = Registrar(session, gateway_url=_url(gw), secret=SECRET, port=node.port, node_key=KEY,
                              ip_source=fixed_ip("127.0.0.1"), slots=1, model="fake", scale=2,
                              gateway_check_interval=0.1, backoff_initial=0.05, backoff_max=0.2)
        task = asyncio.create_task(registrar.run())
        try:
            await wait_until(lambda: registrar.registrations == 1, 10, "the node to register")
            resp = await gw.client.post("/webhook/unregister", json={"secret": SECRET, "server_id": "GPU-001",
                                                                     "node_key": KEY})
            assert resp.status == 200, await resp.text()
            await wait_until(lambda: registrar.registrations == 2, 10, "the node to register again")
            await _wait_listed(gw, [("GPU-001", node.port, "healthy")], "GPU-001 back online")
            assert registrar.server_id == "GPU-001"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_every_gateway_on_redis_sees_the_node_offline_and_back(
        aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any], nodes: Any) -> None:
    a = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    b = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    node = await nodes()
    await a.register(node, node_key=KEY)
    await _wait_listed(b, [("GPU-001", node.port, "healthy")], "gateway b to see GPU-001")
    resp = await a.client.post("/webhook/unregister", json={"secret": SECRET, "server_id": "GPU-001", "node_key": KEY})
    assert resp.status == 200, await resp.text()
    await _wait_listed(b, [("GPU-001", node.port, "offline")], "gateway b to see GPU-001 offline")
    assert b.app[GATEWAY].registry.serving(True) == []
    assert (await b.register(node, node_key=KEY))["server_id"] == "GPU-001"
    await _wait_listed(a, [("GPU-001", node.port, "healthy")], "gateway a to see GPU-001 back")


async def test_a_data_dir_from_before_offline_nodes_opens(aiohttp_client: Any, tmp_path: Path) -> None:
    """An upgrade: the SQLite file of an earlier version (no ``offline`` column) keeps its nodes."""
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "photogate.db") as conn:
        conn.execute("CREATE TABLE nodes (server_id TEXT PRIMARY KEY, ordinal INTEGER NOT NULL, ip TEXT NOT NULL,"
                     " port INTEGER NOT NULL, node_key TEXT UNIQUE, node_token TEXT NOT NULL,"
                     " slots INTEGER NOT NULL DEFAULT 1, weight INTEGER NOT NULL DEFAULT 1,"
                     " draining INTEGER NOT NULL DEFAULT 0, registered_at REAL NOT NULL, updated_at REAL NOT NULL,"
                     " info TEXT NOT NULL DEFAULT '{}')")
        conn.execute("INSERT INTO nodes VALUES ('GPU-004', 4, '127.0.0.1', 9, ?, 'token', 1, 1, 0, 1.0, 1.0, '{}')",
                     (KEY,))
    gw = Gateway(await aiohttp_client(create_app(make_config(tmp_path))))
    assert [(s["server_id"], s["offline"]) for s in await _servers(gw)] == [("GPU-004", False)]
