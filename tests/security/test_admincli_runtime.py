"""Issue 15 item 10, the CLI: ``photogate-admin config show`` says for each runtime value
whether it comes from the config file or a runtime change; ``config reset KEY`` drops a
runtime change (the file's value applies again, after a restart too)."""

from __future__ import annotations

import io
import json
from typing import Any

from support import ADMIN_TOKEN, SECRET, Gateway

from photogate.admincli import run


def url(gw: Gateway) -> str:
    return str(gw.client.make_url("")).rstrip("/")


async def cli(gw: Gateway, *argv: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {"WEBHOOK_SECRET": SECRET, "PHOTOGATE_ADMIN_TOKEN": token, "GATEWAY_URL": url(gw)}
    code = await run(list(argv), stdout=out, env=env, stderr=err)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


def line(out: str, key: str) -> str:
    found = [text for text in out.splitlines() if text.startswith(f"{key} = ")]
    assert len(found) == 1, out
    return found[0]


async def test_config_show_names_each_values_source(gateway: Gateway) -> None:
    code, out, err = await cli(gateway, "config", "show")
    assert code == 0, err
    assert line(out, "balancer.strategy") == "balancer.strategy = round_robin"
    assert out.splitlines()[-3:] == ["# balancer.strategy: config file", "# balancer.options: config file",
                                     "# multi_backend.enabled: config file"]

    assert (await cli(gateway, "strategy", "least_busy"))[0] == 0
    assert (await cli(gateway, "config", "set", "multi_backend.enabled", "off"))[0] == 0
    code, out, err = await cli(gateway, "config", "show")
    assert code == 0, err
    strategy = line(out, "balancer.strategy")
    assert strategy.startswith("balancer.strategy = least_busy  # runtime change by admin@127.0.0.1 at ")
    assert strategy.endswith("; the file says round_robin (undo: photogate-admin config reset balancer.strategy)")
    assert line(out, "multi_backend.enabled").endswith(
        "; the file says true (undo: photogate-admin config reset multi_backend.enabled)")
    assert line(out, "health_check.interval") == "health_check.interval = 0.2"  # not a runtime key: no note
    assert out.splitlines()[-3:] == ["# balancer.strategy: runtime change", "# balancer.options: runtime change",
                                     "# multi_backend.enabled: runtime change"]
    assert "runtime." not in out  # the sources annotate the values; they are no keys of their own

    code, out, _ = await cli(gateway, "config", "show", "balancer.strategy")
    assert code == 0 and out.startswith("balancer.strategy = least_busy  # runtime change by admin@127.0.0.1")
    assert out.endswith("\n# balancer.strategy: runtime change\n")

    code, out, _ = await cli(gateway, "config", "show", "--json")
    data = json.loads(out)
    assert code == 0 and data["balancer"]["strategy"] == "least_busy"
    assert {k: v["source"] for k, v in data["runtime"].items()} == {
        "balancer.strategy": "runtime", "balancer.options": "runtime", "multi_backend.enabled": "runtime"}


async def test_config_reset_drops_a_runtime_change(gateway: Gateway) -> None:
    assert (await cli(gateway, "strategy", "least_busy"))[0] == 0
    code, out, err = await cli(gateway, "config", "reset", "balancer.strategy")
    assert code == 0, err
    assert out == ("runtime change of balancer.strategy, balancer.options dropped: the config file's value "
                   "applies; now strategy round_robin, multi-backend on\n")
    code, out, _ = await cli(gateway, "config", "show", "balancer.strategy")
    assert out == "balancer.strategy = round_robin\n# balancer.strategy: config file\n"

    code, out, _ = await cli(gateway, "config", "reset", "multi_backend.enabled")
    assert code == 0 and out.startswith("multi_backend.enabled has no runtime change: it already comes from the "
                                        "config file")

    code, out, _ = await cli(gateway, "config", "reset", "balancer.strategy", "--json")
    answer: dict[str, Any] = json.loads(out)
    assert code == 0 and answer["reset"] == [] and answer["strategy"] == "round_robin"


async def test_config_reset_refuses_what_is_not_a_runtime_key(gateway: Gateway) -> None:
    code, out, err = await cli(gateway, "config", "reset", "limits.max_pixels")
    assert code == 2 and out == ""
    assert err == ("photogate-admin: config reset: 'limits.max_pixels' is not a runtime setting; runtime "
                   "settings: balancer.strategy, balancer.options, multi_backend.enabled\n")
    code, _, err = await cli(gateway, "config", "reset", "balancer.strategy", token="wrong-token-0123456789")
    assert code == 1 and "wrong admin token" in err
