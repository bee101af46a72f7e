"""Issue 15 item 10: runtime changes persist.

``strategy least_busy``, ``multi-backend off`` and a drain survive a gateway restart and
reach every gateway sharing one Redis; ``/api/v1/admin/config`` says where each runtime
value comes from; ``POST /api/v1/config/reset`` drops a runtime change; a reload of the
file (SIGHUP, ``config reload``) leaves runtime changes in place until they are reset."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIN_TOKEN, SECRET, Gateway, make_config, wait_until

from photogate.app import create_app
from photogate.config import Config, load_config
from photogate.keys import GATEWAY

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FILE = {"balancer.strategy": "round_robin", "multi_backend.enabled": True}



@contextlib.asynccontextmanager
async def serve(config: Config, config_path: Path | None = None) -> AsyncIterator[Gateway]:
    """A gateway that runs for the block only (leaving it is a clean stop, as SIGTERM)."""
    client = TestClient(TestServer(create_app(config, config_path=str(config_path) if config_path else None)))
    await client.start_server()
    try:
        yield Gateway(client)
    finally:
        await client.close()


async def post(gw: Gateway, path: str, body: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
    resp = await gw.client.post(path, json=body or {}, headers=ADMIN)
    data = await resp.json()
    assert resp.status == status, data
    return data


async def effective(gw: Gateway) -> dict[str, Any]:
    resp = await gw.client.get("/api/v1/admin/config", headers=ADMIN)
    assert resp.status == 200
    data = await resp.json()
    return {"strategy": data["balancer"]["strategy"], "options": data["balancer"]["options"],
            "multi_backend": data["multi_backend"]["enabled"],
            "sources": {k: v["source"] for k, v in data["runtime"].items()}, "runtime": data["runtime"]}


async def drained(gw: Gateway) -> dict[str, bool]:
    resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    assert resp.status == 200
    return {s["server_id"]: s["draining"] for s in (await resp.json())["data"]["servers"]}


async def test_strategy_multi_backend_and_drain_survive_a_restart(  # type: ignore[no-untyped-def]
        backend: dict[str, Any], tmp_path: Path, nodes) -> None:
    config = make_config(tmp_path, **FILE, **backend)
    node = await nodes()
    async with serve(config) as gw:
        sid = (await gw.register(node))["server_id"]
        await post(gw, "/api/v1/config/strategy", {"strategy": "least_busy"})
        await post(gw, "/api/v1/config/multi-backend", {"enabled": False})
        await post(gw, f"/api/v1/admin/servers/{sid}/drain")
    async with serve(config) as gw:
        now = await effective(gw)
        assert (now["strategy"], now["multi_backend"]) == ("least_busy", False)
        assert now["sources"] == {"balancer.strategy": "runtime", "balancer.options": "runtime",
                                  "multi_backend.enabled": "runtime"}
        assert now["runtime"]["balancer.strategy"]["file_value"] == "round_robin"
        assert now["runtime"]["multi_backend.enabled"]["file_value"] is True
        assert now["runtime"]["balancer.strategy"]["who"].startswith("admin@")
        assert await drained(gw) == {sid: True}
        fleet = (await (await gw.client.get("/api/v1/health")).json())["fleet"]
        assert (fleet["strategy"], fleet["multi_backend"]) == ("least_busy", False)


async def test_reset_brings_back_the_files_value_after_a_restart(  # type: ignore[no-untyped-def]
        backend: dict[str, Any], tmp_path: Path) -> None:
    config = make_config(tmp_path, **FILE, **backend)
    async with serve(config) as gw:
        await post(gw, "/api/v1/config/strategy", {"strategy": "weighted", "options": {"weights": {"GPU-001": 3}}})
        await post(gw, "/api/v1/config/multi-backend", {"enabled": False})
        answer = await post(gw, "/api/v1/config/reset", {"key": "balancer.options"})
        assert answer["reset"] == ["balancer.strategy", "balancer.options"]  # options belong to their strategy
        assert (answer["strategy"], answer["options"], answer["multi_backend"]) == ("round_robin", {}, False)
        again = await post(gw, "/api/v1/config/reset", {"key": "balancer.strategy"})
        assert again["reset"] == [] and "already comes from the config file" in again["message"]
    async with serve(config) as gw:
        now = await effective(gw)
        assert (now["strategy"], now["options"], now["multi_backend"]) == ("round_robin", {}, False)
        assert now["sources"] == {"balancer.strategy": "file", "balancer.options": "file",
                                  "multi_backend.enabled": "runtime"}
        await post(gw, "/api/v1/config/reset", {"key": "multi_backend.enabled"})
        assert (await effective(gw))["multi_backend"] is True


async def test_reset_refuses_unknown_keys_and_strangers(tmp_path: Path) -> None:
    async with serve(make_config(tmp_path)) as gw:
        error = (await post(gw, "/api/v1/config/reset", {"key": "limits.max_pixels"}, status=400))["error"]
        assert error == ("'limits.max_pixels' is not a runtime setting; runtime settings: "
                         "balancer.strategy, balancer.options, multi_backend.enabled")
        resp = await gw.client.post("/api/v1/config/reset", json={"key": "balancer.strategy"})
        assert resp.status == 401


async def test_every_gateway_of_a_redis_deployment_agrees(tmp_path: Path, redis_config: dict[str, Any]) -> None:
    config = make_config(tmp_path, **FILE, **redis_config)
    async with serve(config) as one, serve(config) as two:
        await post(one, "/api/v1/config/strategy", {"strategy": "least_busy"})
        await post(one, "/api/v1/config/multi-backend", {"enabled": False})

        async def two_follows() -> bool:
            now = await effective(two)
            return (now["strategy"], now["multi_backend"]) == ("least_busy", False)

        await wait_until(two_follows, 10, "the second gateway to apply the first one's runtime changes")
        fleet = (await (await two.client.get("/api/v1/health")).json())["fleet"]
        assert (fleet["strategy"], fleet["multi_backend"]) == ("least_busy", False)

        await post(two, "/api/v1/config/reset", {"key": "balancer.strategy"})

        async def one_follows() -> bool:
            return (await effective(one))["strategy"] == "round_robin"

        await wait_until(one_follows, 10, "the first gateway to drop the reset runtime change")
        now = await effective(one)
        assert now["multi_backend"] is False and now["sources"]["balancer.strategy"] == "file"
        # A gateway that starts later agrees too.
        async with serve(config) as three:
            later = await effective(three)
            assert (later["strategy"], later["multi_backend"]) == ("round_robin", False)


async def test_a_reload_keeps_runtime_changes_until_reset(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"

    def write(strategy: str, multi: bool) -> None:
        path.write_text(yaml.safe_dump({
            "webhook": {"secret": SECRET, "allowed_node_networks": ["127.0.0.0/8"]},
            "admin": {"token": ADMIN_TOKEN}, "storage": {"data_dir": str(tmp_path / "data")},
            "balancer": {"strategy": strategy}, "multi_backend": {"enabled": multi},
        }))

    write("round_robin", True)
    async with serve(load_config(path, env={}), config_path=path) as gw:
        await post(gw, "/api/v1/config/strategy", {"strategy": "least_busy"})
        write("fastest", False)  # the operator edits the file, then reloads
        answer = await post(gw, "/api/v1/config/reload")
        assert (answer["strategy"], answer["multi_backend"]) == ("least_busy", False)
        now = await effective(gw)
        # The runtime change wins; the rest follows the file.
        assert (now["strategy"], now["multi_backend"]) == ("least_busy", False)
        assert now["runtime"]["balancer.strategy"]["file_value"] == "fastest"
        assert now["sources"] == {"balancer.strategy": "runtime", "balancer.options": "runtime",
                                  "multi_backend.enabled": "file"}
        await post(gw, "/api/v1/config/reset", {"key": "balancer.strategy"})
        assert (await effective(gw))["strategy"] == "fastest"


async def test_a_reloaded_health_check_interval_applies_at_once(tmp_path: Path) -> None:
    """A shorter ``health_check.interval`` in a reloaded file starts the next round now, not
    once the old (long) interval has elapsed."""
    path = tmp_path / "gateway.yaml"

    def write(interval: float) -> None:
        path.write_text(yaml.safe_dump({
            "webhook": {"secret": SECRET, "allowed_node_networks": ["127.0.0.0/8"]},
            "admin": {"token": ADMIN_TOKEN}, "storage": {"data_dir": str(tmp_path / "data")},
            "health_check": {"interval": interval},
        }))

    write(3600)
    async with serve(load_config(path, env={}), config_path=path) as gw:
        monitor = gw.app[GATEWAY].monitor
        await wait_until(lambda: monitor.rounds == 1, 5, "the first health round at start")
        write(0.05)
        await post(gw, "/api/v1/config/reload")
        await wait_until(lambda: monitor.rounds >= 3, 5, "health rounds at the reloaded interval")
        assert monitor.interval == 0.05


async def test_a_gateway_process_restart_keeps_runtime_changes(gateway_process) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_process("balancer:\n  strategy: round_robin\nmulti_backend:\n  enabled: true\n")
    gw.start()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
        for path, body in (("/api/v1/config/strategy", {"strategy": "least_busy"}),
                           ("/api/v1/config/multi-backend", {"enabled": False})):
            async with session.post(gw.url + path, json=body, headers=ADMIN) as resp:
                assert resp.status == 200, await resp.text()
        gw.stop()  # SIGTERM, as systemctl restart
        gw.start()
        await gw.wait_ready(session)
        async with session.get(gw.url + "/api/v1/admin/config", headers=ADMIN) as resp:
            data = await resp.json()
        assert data["balancer"]["strategy"] == "least_busy" and data["multi_backend"]["enabled"] is False
        assert data["runtime"]["balancer.strategy"] == {
            "source": "runtime", "value": "least_busy", "file_value": "round_robin",
            "changed_at": data["runtime"]["balancer.strategy"]["changed_at"], "who": "admin@127.0.0.1"}
