"""``GET /metrics``: counters and histograms move with what the gateway did; live state is read at scrape time."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import ADMIN_TOKEN, SECRET, FakeNode, Gateway, image_bytes, wait_until

REPO = Path(__file__).resolve().parent.parent


async def scrape(gateway: Gateway, headers: dict[str, str] | None = None) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from /metrics."""
    resp = await gateway.client.get("/metrics", headers=headers or {})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


async def test_metrics_after_a_run(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    good: FakeNode = await nodes()
    bad: FakeNode = await nodes()
    await gateway.register(good)
    await gateway.register(bad)
    before = await scrape(gateway)
    assert value(before, "photogate_tasks_submitted_total") == 0
    assert value(before, "photogate_nodes_serving") == 2
    assert value(before, "photogate_node_up", server_id="GPU-002") == 1

    bad.mode = "error500"  # every task that lands there is retried on GPU-001
    task_ids = [await gateway.submit(image_bytes(100, 50)) for _ in range(4)]
    finals = [await gateway.wait_done(t) for t in task_ids]
    assert [f["status"] for f in finals] == ["completed"] * 4
    rejected = await gateway.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 9, "secret": "nope"})
    assert rejected.status == 403
    await gateway.client.get("/api/v1/status/" + "0" * 32)

    after = await scrape(gateway)
    assert value(after, "photogate_tasks_submitted_total") == 4
    assert value(after, "photogate_tasks_finished_total", status="completed") == 4
    assert value(after, "photogate_tasks_finished_total", status="failed") == 0
    failures = value(after, "photogate_dispatch_failures_total", server_id="GPU-002", reason="node_error")
    assert failures >= 1 and value(after, "photogate_task_retries_total") == failures
    # Histograms: one observation per task, total >= queue wait, every bucket set cumulative.
    assert value(after, "photogate_task_queue_wait_seconds_count") == 4
    assert value(after, "photogate_task_total_seconds_count") == 4
    assert value(after, "photogate_task_inference_seconds_count", server_id="GPU-001") == 4
    assert value(after, "photogate_task_inference_seconds_count", server_id="GPU-002") == 0
    assert value(after, "photogate_task_total_seconds_sum") >= value(after, "photogate_task_queue_wait_seconds_sum")
    assert value(after, "photogate_task_total_seconds_bucket", le="+Inf") == 4
    assert value(after, "photogate_megapixels_processed_total", server_id="GPU-001") == 4 * 100 * 50 / 1e6
    assert value(after, "photogate_throughput_megapixels_per_second") > 0
    assert value(after, "photogate_node_throughput_megapixels_per_second", server_id="GPU-001") > 0
    # Live state read at scrape time.
    assert value(after, "photogate_tasks", state="completed") == 4
    assert value(after, "photogate_tasks", state="queued") == 0
    assert value(after, "photogate_queue_depth") == 0 and value(after, "photogate_in_flight") == 0
    assert value(after, "photogate_node_slots", server_id="GPU-001") == 1
    assert value(after, "photogate_webhook_auth_failures_total", action="register", reason="wrong secret") == 1
    # Requests by route template (never the raw path) and status.
    assert value(after, "photogate_http_requests_total", route="/api/v1/enhance", method="POST", status="200") == 4
    assert value(after, "photogate_http_requests_total", route="/webhook/register", method="POST", status="403") == 1
    assert value(after, "photogate_http_requests_total", route="/api/v1/status/{task_id}", method="GET",
                 status="404") == 1
    assert not any("0" * 32 in dict(k).get("route", "") for k in after["photogate_http_requests_total"])
    info = after["photogate_info"]
    assert any(dict(k)["strategy"] == "round_robin" for k in info)


async def test_node_health_and_queue_are_live(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node: FakeNode = await nodes(delay=0.3)
    await gateway.register(node)
    for _ in range(3):
        await gateway.submit()

    async def busy() -> bool:
        s = await scrape(gateway)
        return value(s, "photogate_in_flight") == 1 and value(s, "photogate_queue_depth") == 2

    await wait_until(busy, 5, "one task in flight and two queued")
    await node.stop()

    async def down() -> bool:
        return value(await scrape(gateway), "photogate_node_up", server_id="GPU-001") == 0

    await wait_until(down, 10, "the node to be reported down")
    s = await scrape(gateway)
    assert value(s, "photogate_nodes_serving") == 0
    assert value(s, "photogate_node_consecutive_failures", server_id="GPU-001") >= 3
    assert value(s, "photogate_node_last_check_timestamp_seconds", server_id="GPU-001") > 0


async def test_metrics_token(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"metrics.token": "scrape-token-123"})
    resp = await gateway.client.get("/metrics")
    assert resp.status == 401 and "metrics token" in (await resp.json())["error"]
    assert (await gateway.client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    samples = await scrape(gateway, {"Authorization": "Bearer scrape-token-123"})
    assert "photogate_queue_depth" in samples


async def test_two_gateways_in_one_process_keep_their_own_counts(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    one = await make_gateway(**{"storage.data_dir": str(tmp_path / "one")})
    two = await make_gateway(**{"storage.data_dir": str(tmp_path / "two")})
    await one.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 9, "secret": "nope"})
    assert value(await scrape(one), "photogate_webhook_auth_failures_total",
                 action="register", reason="wrong secret") == 1
    assert value(await scrape(two), "photogate_webhook_auth_failures_total",
                 action="register", reason="wrong secret") == 0


async def test_alert_rules_are_well_formed_and_use_exposed_metrics(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    """deploy/prometheus/alerts.yml: fields of each rule, and every metric it names exists."""
    node = await nodes()
    await gateway.register(node)
    await gateway.wait_done(await gateway.submit())
    exposed = set(await scrape(gateway))
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {"PhotogateNoHealthyNode", "PhotogateQueueGrowing", "PhotogateNodeDown"}
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
        names = set(re.findall(r"\b(photogate_[a-z_]+)", rule["expr"]))
        assert names and names <= exposed, (rule["alert"], names - exposed)
    down = next(a for a in alerts if a["alert"] == "PhotogateNodeDown")
    assert down["for"] == "5m"


def test_grafana_dashboard_uses_exposed_metric_names() -> None:
    board = json.loads((REPO / "deploy" / "grafana" / "photogate-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs
    known = {
        "photogate_http_requests_total", "photogate_task_queue_wait_seconds_bucket",
        "photogate_task_inference_seconds_bucket", "photogate_task_total_seconds_bucket", "photogate_queue_depth",
        "photogate_tasks", "photogate_node_up", "photogate_node_in_flight", "photogate_node_slots",
        "photogate_throughput_megapixels_per_second", "photogate_node_throughput_megapixels_per_second",
        "photogate_dispatch_failures_total", "photogate_task_retries_total", "photogate_webhook_auth_failures_total",
        "photogate_in_flight", "photogate_slots", "photogate_nodes_serving", "photogate_node_draining",
        "photogate_megapixels_processed_total", "photogate_tasks_finished_total", "photogate_info",
    }
    for expr in exprs:
        assert set(re.findall(r"\b(photogate_[a-z_]+)", expr)) <= known, expr


async def test_webhook_secret_not_in_metrics(gateway: Gateway) -> None:
    resp = await gateway.client.get("/metrics")
    text = await resp.text()
    assert SECRET not in text and ADMIN_TOKEN not in text


def test_alert_rules_pass_promtool() -> None:
    """Where Debian's promtool is installed: the rules load, their unit tests pass, the example config is valid."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus); "
                    "the YAML test above still checks the rules")
    folder = REPO / "deploy" / "prometheus"
    for args, expected in ((["check", "rules", "alerts.yml"], "SUCCESS: 3 rules found"),
                           (["test", "rules", "alerts_test.yml"], "SUCCESS"),
                           (["check", "config", "prometheus.yml"], "is valid prometheus config file syntax")):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=folder)
        assert done.returncode == 0, done.stdout + done.stderr
        assert expected in done.stdout + done.stderr, done.stdout + done.stderr
