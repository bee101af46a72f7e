"""Strategies: distribution with seeded RNGs (synchronous), loading by name, runtime swap."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from support import Gateway

from photogate.app import create_app
from photogate.balancing import JobView, NodeView, RoundRobin, Strategy, StrategyError, load_strategy
from photogate.config import load_config
from photogate.keys import GATEWAY

JOB = JobView("t", 1.0, 1000)


def view(sid: str, inflight: int = 0, slots: int = 1, weight: int = 1, **health) -> NodeView:  # type: ignore[no-untyped-def]
    return NodeView(sid, "127.0.0.1:1", inflight, slots, weight, health)


class PickLast:
    """A strategy defined in a test module, loaded as ``module:Class``."""

    name = "pick_last"

    def __init__(self, options, rng) -> None:  # type: ignore[no-untyped-def]
        self.options = options

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView:
        return max(candidates, key=lambda n: n.server_id)


class PinSecond:
    """A drop-in strategy that sends everything to GPU-002 while it can take work."""

    name = "pin_second"

    def __init__(self, options, rng) -> None:  # type: ignore[no-untyped-def]
        pass

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView:
        return next((n for n in candidates if n.server_id == "GPU-002"), candidates[0])


def test_round_robin_cycles_in_id_order_and_skips_missing_nodes() -> None:
    rr = RoundRobin()
    nodes = [view("GPU-001"), view("GPU-002"), view("GPU-010")]
    picks = [rr.choose(nodes, JOB).server_id for _ in range(6)]
    assert picks == ["GPU-001", "GPU-002", "GPU-010"] * 2
    # GPU-002 unhealthy (not a candidate): skipped, order kept.
    picks = [rr.choose([nodes[0], nodes[2]], JOB).server_id for _ in range(4)]
    assert picks == ["GPU-001", "GPU-010", "GPU-001", "GPU-010"]


def test_least_busy_prefers_free_capacity_with_seeded_ties() -> None:
    strategy = load_strategy("least_busy", {}, random.Random(7))
    nodes = [view("GPU-001", inflight=1, slots=2), view("GPU-002", inflight=0, slots=1),
             view("GPU-003", inflight=3, slots=4)]
    assert strategy.choose(nodes, JOB).server_id == "GPU-002"
    ties = [view("GPU-001"), view("GPU-002"), view("GPU-003", queued=2)]
    counts = Counter(strategy.choose(ties, JOB).server_id for _ in range(3000))
    assert set(counts) == {"GPU-001", "GPU-002"}  # the node with a reported queue is avoided
    assert abs(counts["GPU-001"] - 1500) < 150
    assert _seq("least_busy", ties, 7, 20) == _seq("least_busy", ties, 7, 20)  # seeded: repeatable


def _seq(name: str, nodes: list[NodeView], seed: int, n: int) -> list[str]:
    strategy = load_strategy(name, {}, random.Random(seed))
    return [strategy.choose(nodes, JOB).server_id for _ in range(n)]


def test_weighted_is_smooth_like_nginx() -> None:
    strategy = load_strategy("weighted", {"weights": {"GPU-001": 5}}, random.Random(0))
    nodes = [view("GPU-001"), view("GPU-002"), view("GPU-003")]
    picks = [strategy.choose(nodes, JOB).server_id[-1] for _ in range(7)]
    assert "".join(picks) == "1121311"  # nginx's a a b a c a a, never five in a row
    counts = Counter(strategy.choose(nodes, JOB).server_id for _ in range(700))
    assert counts == {"GPU-001": 500, "GPU-002": 100, "GPU-003": 100}
    # Registration weights apply when config names none.
    by_registration = load_strategy("weighted", {}, random.Random(0))
    counts = Counter(by_registration.choose([view("GPU-001", weight=3), view("GPU-002")], JOB).server_id
                     for _ in range(400))
    assert counts == {"GPU-001": 300, "GPU-002": 100}


def test_unknown_strategy_and_bad_options_fail_listing_known_names() -> None:
    with pytest.raises(StrategyError) as exc:
        load_strategy("fastest_ever")
    assert str(exc.value).startswith("unknown strategy 'fastest_ever'; known: ")
    assert "least_busy" in str(exc.value) and "round_robin" in str(exc.value) and "weighted" in str(exc.value)
    with pytest.raises(StrategyError, match="weight of GPU-001 must be a positive integer"):
        load_strategy("weighted", {"weights": {"GPU-001": 0}})
    with pytest.raises(StrategyError, match="no attribute 'Nope'"):
        load_strategy("test_balancing:Nope")
    with pytest.raises(StrategyError, match="failed to load: ModuleNotFoundError"):
        load_strategy("no_such_module_xyz:Thing")


def test_strategies_load_by_name_from_yaml(tmp_path: Path) -> None:
    for name, cls in [("least_busy", "LeastBusy"), ("weighted", "Weighted"), ("test_balancing:PickLast", "PickLast")]:
        path = tmp_path / f"{cls}.yaml"
        path.write_text(f"webhook:\n  secret: s3cret-value\nbalancer:\n  strategy: '{name}'\n"
                        f"storage:\n  data_dir: {tmp_path / cls}\n")
        app = create_app(load_config(path, env={}))
        assert type(app[GATEWAY].strategy).__name__ == cls


def test_a_module_dropped_in_strategies_is_found_by_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import strategies

    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "always_first.py").write_text(
        "class AlwaysFirst:\n"
        "    name = 'always_first'\n"
        "    def __init__(self, options, rng):\n"
        "        pass\n"
        "    def choose(self, candidates, job):\n"
        "        return candidates[0]\n"
        "STRATEGY = AlwaysFirst\n"
    )
    monkeypatch.setattr(strategies, "__path__", [*strategies.__path__, str(folder)])
    strategy = load_strategy("always_first")
    assert strategy.choose([view("GPU-002"), view("GPU-001")], JOB).server_id == "GPU-002"


async def test_swapping_strategy_while_tasks_run_loses_none(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet = [await nodes(delay=0.05) for _ in range(3)]
    for node in fleet:
        await gateway.register(node)

    async def submit() -> str:
        return await gateway.submit()

    first = await asyncio.gather(*(submit() for _ in range(15)))
    for name in ("least_busy", "fastest", "test_balancing:PickLast", "weighted"):
        resp = await gateway.client.post("/api/v1/config/strategy", json={"strategy": name},
                                         headers=gateway.admin_headers())
        assert resp.status == 200, await resp.json()
    second = await asyncio.gather(*(submit() for _ in range(15)))
    finals = await asyncio.gather(*(gateway.wait_done(t, 30) for t in first + second))
    assert [f["status"] for f in finals] == ["completed"] * 30
    assert sum(n.jobs for n in fleet) == 30
    resp = await gateway.client.post("/api/v1/config/strategy", json={"strategy": "nope"},
                                     headers=gateway.admin_headers())
    assert resp.status == 400 and "unknown strategy 'nope'" in (await resp.json())["error"]
    assert gateway.app[GATEWAY].strategy_name == "weighted"


async def placements(gateway: Gateway, count: int) -> list[str]:
    """Where ``count`` photos ran, one after another (each node idle when the next is placed)."""
    where = []
    for _ in range(count):
        final = await gateway.wait_done(await gateway.submit(), 30)
        assert final["status"] == "completed", final
        where.append(final["server_id"])
    return where


async def _swap(gateway: Gateway, name: str, options: dict | None = None) -> None:  # type: ignore[type-arg]
    resp = await gateway.client.post("/api/v1/config/strategy", json={"strategy": name, "options": options or {}},
                                     headers=gateway.admin_headers())
    assert resp.status == 200, await resp.json()


async def test_a_swap_changes_where_the_next_jobs_go(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet = [await nodes() for _ in range(3)]
    for node in fleet:
        await gateway.register(node)
    assert await placements(gateway, 6) == ["GPU-001", "GPU-002", "GPU-003"] * 2  # round_robin, the default
    await _swap(gateway, "test_balancing:PinSecond")
    assert await placements(gateway, 6) == ["GPU-002"] * 6
    await _swap(gateway, "weighted", {"weights": {"GPU-001": 1, "GPU-002": 3, "GPU-003": 1}})
    assert "".join(s[-1] for s in await placements(gateway, 10)) == "2123221232"  # smooth 1:3:1
    await _swap(gateway, "round_robin")
    assert await placements(gateway, 3) == ["GPU-001", "GPU-002", "GPU-003"]
    assert [n.jobs for n in fleet] == [2 + 2 + 1, 2 + 6 + 6 + 1, 2 + 2 + 1]


async def test_sighup_style_reload_swaps_the_strategy(aiohttp_client, tmp_path: Path, nodes) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "gw.yaml"
    path.write_text(f"webhook:\n  secret: s3cret-value\n  allowed_node_networks: ['127.0.0.0/8']\n"
                    f"storage:\n  data_dir: {tmp_path / 'd'}\nhealth_check:\n  interval: 0.2\n")
    client = await aiohttp_client(create_app(load_config(path, env={}), config_path=str(path)))
    gateway = Gateway(client)
    gw = client.server.app[GATEWAY]
    fleet = [await nodes() for _ in range(3)]
    for node in fleet:
        resp = await client.post("/webhook/register", json={"ip": "127.0.0.1", "port": node.port,
                                                            "secret": "s3cret-value"})
        assert resp.status == 200, await resp.json()
        node.token = (await resp.json())["node_token"]
    assert await placements(gateway, 3) == ["GPU-001", "GPU-002", "GPU-003"]
    path.write_text(path.read_text() + "balancer:\n  strategy: test_balancing:PinSecond\n")
    gw.reload_config()
    assert gw.strategy_name == "test_balancing:PinSecond"
    assert await placements(gateway, 4) == ["GPU-002"] * 4
    path.write_text(path.read_text().replace("test_balancing:PinSecond", "least_busy")
                    + "multi_backend:\n  enabled: false\n")
    gw.reload_config()
    assert gw.strategy_name == "least_busy" and gw.multi_backend is False
    # One primary node now (multi-backend off): everything goes to GPU-001 whatever the strategy.
    assert await placements(gateway, 3) == ["GPU-001"] * 3


class CountsDispatches:
    """A plugin written against the duck-typed interface: no base class, one hook of its own."""

    plans_ahead = True

    def __init__(self, options, rng) -> None:  # type: ignore[no-untyped-def]
        self.dispatched: list[str] = []

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView:
        return candidates[0]

    def on_dispatched(self, server_id: str, job: JobView) -> None:
        self.dispatched.append(server_id)


def test_a_duck_typed_plugin_is_adopted_with_its_own_hooks_and_the_defaults() -> None:
    strategy = load_strategy("test_balancing:CountsDispatches")
    assert isinstance(strategy, Strategy) and isinstance(strategy, CountsDispatches)
    assert type(strategy).__name__ == "CountsDispatches" and strategy.name == "test_balancing:CountsDispatches"
    assert strategy.plans_ahead is True
    strategy.begin_pass()  # the hooks it lacks do nothing
    strategy.on_completed("GPU-001", JOB, 1.0, True)
    strategy.on_dispatched("GPU-002", JOB)
    assert strategy.dispatched == ["GPU-002"]


def test_a_class_without_choose_is_refused_by_name() -> None:
    with pytest.raises(StrategyError, match="NoChoice has no choose"):
        load_strategy("test_balancing:NoChoice")


class NoChoice:
    def __init__(self, options, rng) -> None:  # type: ignore[no-untyped-def]
        pass
