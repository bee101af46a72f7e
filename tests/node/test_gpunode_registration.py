"""Joining the fleet: late gateway, IP change, lost gateway store, SIGTERM unregisters."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from helpers.photos import encoded
from helpers.polling import wait_until
from node_support import FakeGateway, photo

from gpunode.keys import REGISTRAR
from gpunode.registration import load_node_key


def registrar(node):  # type: ignore[no-untyped-def]
    return node.app[REGISTRAR]


async def test_registration_retries_until_a_late_gateway_starts(start_node, fake_gateway, http) -> None:  # type: ignore[no-untyped-def]
    # The gateway's port is reserved but not listening: connections are refused.
    node = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret, advertise_ip="127.0.0.1")
    body = encoded(photo().resize((16, 16)))
    async with http.post(f"{node.url}/v1/enhance", data=body, headers={"Authorization": "Bearer x"}) as resp:
        assert resp.status == 401 and "not registered" in (await resp.json())["error"]
    await wait_until(lambda: registrar(node).attempts >= 3, timeout=10)  # refused, backing off
    assert registrar(node).server_id is None
    await fake_gateway.start()
    await wait_until(lambda: registrar(node).server_id == "GPU-001", timeout=20)
    reg = fake_gateway.registrations()[0]
    assert reg["ip"] == "127.0.0.1" and reg["port"] == node.config.port and reg["slots"] == 1
    assert reg["model"] == "waifu2x-upconv7-photo-x2" and reg["scale"] == 2 and len(reg["node_key"]) == 32
    # Registered: the gateway's token now works, and only it.
    token = fake_gateway.token_of("GPU-001")
    async with http.post(f"{node.url}/v1/enhance", data=body, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
    async with http.post(f"{node.url}/v1/enhance", data=body, headers={"Authorization": "Bearer x"}) as resp:
        assert resp.status == 401
    async with http.get(f"{node.url}/health") as resp:
        health = await resp.json()
    assert health["server_id"] == "GPU-001" and token not in str(health) and fake_gateway.secret not in str(health)


async def test_wrong_secret_keeps_retrying_without_registering(start_node, fake_gateway) -> None:  # type: ignore[no-untyped-def]
    await fake_gateway.start()
    node = await start_node(gateway_url=fake_gateway.url, secret="wrong", advertise_ip="127.0.0.1")
    await wait_until(lambda: registrar(node).attempts >= 3, timeout=10)
    assert registrar(node).server_id is None and fake_gateway.registrations() == []


async def test_ip_change_reregisters_with_the_same_id(start_node, fake_gateway) -> None:  # type: ignore[no-untyped-def]
    await fake_gateway.start()
    # The IP comes from a URL the fake gateway serves, so the test can change it.
    node = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret,
                            ip_url=f"{fake_gateway.url}/myip", ip_check_interval=0.1)
    await wait_until(lambda: registrar(node).server_id == "GPU-001", timeout=20)
    first_token = registrar(node).token
    fake_gateway.ip = "127.0.0.2"
    await wait_until(lambda: registrar(node).ip == "127.0.0.2", timeout=20)
    regs = fake_gateway.registrations()
    assert [r["ip"] for r in regs] == ["127.0.0.1", "127.0.0.2"]
    assert regs[0]["node_key"] == regs[1]["node_key"]
    assert registrar(node).server_id == "GPU-001" and fake_gateway.servers["GPU-001"]["ip"] == "127.0.0.2"
    assert registrar(node).token != first_token and registrar(node).token == fake_gateway.token_of("GPU-001")


async def test_gateway_that_lost_its_store_gets_a_new_registration(start_node, fake_gateway) -> None:  # type: ignore[no-untyped-def]
    await fake_gateway.start()
    node = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret, advertise_ip="127.0.0.1",
                            gateway_check_interval=0.1)
    await wait_until(lambda: registrar(node).server_id == "GPU-001", timeout=20)
    fake_gateway.lose_store()
    await wait_until(lambda: len(fake_gateway.registrations()) == 2, timeout=20)
    await wait_until(lambda: registrar(node).server_id in fake_gateway.servers, timeout=20)
    assert registrar(node).token == fake_gateway.token_of(registrar(node).server_id)


async def test_node_key_is_stable_and_private(tmp_path: Path, start_node, fake_gateway) -> None:  # type: ignore[no-untyped-def]
    key = load_node_key(tmp_path / "s")
    assert load_node_key(tmp_path / "s") == key and len(key) == 32
    assert (tmp_path / "s" / "node_key").stat().st_mode & 0o777 == 0o600
    await fake_gateway.start()
    # A restarted node (same state dir) gets its id back, a node with another state dir a new one.
    first = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret, advertise_ip="127.0.0.1",
                             state_dir=tmp_path / "a")
    await wait_until(lambda: registrar(first).server_id == "GPU-001", timeout=20)
    await first.stop()
    assert fake_gateway.unregistrations()[0]["server_id"] == "GPU-001"
    again = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret, advertise_ip="127.0.0.1",
                             state_dir=tmp_path / "a")
    other = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret, advertise_ip="127.0.0.1",
                             state_dir=tmp_path / "b")
    await wait_until(lambda: registrar(again).server_id and registrar(other).server_id, timeout=20)
    assert registrar(again).server_id == "GPU-001" and registrar(other).server_id == "GPU-002"


async def test_sigterm_unregisters(tmp_path: Path, fake_gateway: FakeGateway) -> None:
    """A real ``gpunode`` process: registers by itself, unregisters on SIGTERM, exits 0."""
    await fake_gateway.start()
    env = {**os.environ, "GATEWAY_URL": fake_gateway.url, "SHARED_SECRET": fake_gateway.secret,
           "GPUNODE_STATE_DIR": str(tmp_path / "state")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpunode", "--host", "127.0.0.1", "--port", "0", "--advertise-ip", "127.0.0.1",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_until(lambda: fake_gateway.registrations(), timeout=60)
        reg = fake_gateway.registrations()[0]
        assert reg["port"] > 0 and "GPU-001" in fake_gateway.servers
        token = fake_gateway.token_of("GPU-001")
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), timeout=30)
        assert rc == 0
        assert fake_gateway.unregistrations()[0]["server_id"] == "GPU-001"
        assert [s["status"] for s in fake_gateway.servers.values()] == ["offline"]
        log = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert '"registered"' in log and '"GPU-001"' in log and '"unregistered"' in log
        assert fake_gateway.secret not in log and token not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
