"""bin/photogate-admin: every command against a real gateway with real fake nodes.

The CLI runs in-process (``await run(argv, stdout, env, stderr)``) so it shares the test's
event loop with the gateway and the nodes; one test runs ``bin/photogate-admin`` and the
installed console script as real processes against the gateway run as a process.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image
from support import ADMIN_TOKEN, REPO, SECRET, FakeNode, Gateway, image_bytes, wait_until

from photogate.admincli import run
from photogate.admincli.output import masked
from photogate.admincli.parser import parse_server_id
from photogate.keys import GATEWAY


class Tty(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def url(gw: Gateway) -> str:
    return str(gw.client.make_url("")).rstrip("/")


async def cli(gw: Gateway | None, *argv: str, env: dict[str, str] | None = None,
              stdout: io.StringIO | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process with the gateway's URL and credentials in its environment."""
    out, err = stdout or io.StringIO(), io.StringIO()
    base = {"WEBHOOK_SECRET": SECRET, "PHOTOGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    if gw is not None:
        base["GATEWAY_URL"] = url(gw)
    code = await run(list(argv), stdout=out, env={**base, **(env or {})}, stderr=err)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


async def cli_json(gw: Gateway, *argv: str) -> Any:
    code, out, err = await cli(gw, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


class GatedNode(FakeNode):
    """A slow node: each job waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def _enhance(self, request: web.Request) -> web.Response:
        self.busy += 1
        try:
            await self.gate.wait()
        finally:
            self.busy -= 1
        return await super()._enhance(request)


# -- 2. the seed's exact flags ----------------------------------------------------------------


async def test_seed_flags_register_list_unregister(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    gw_url, port = url(gateway), str(node.port)
    seed = {"env": {"WEBHOOK_SECRET": "", "PHOTOGATE_ADMIN_TOKEN": ""}}  # only what the flags say

    code, out, err = await cli(None, "register", "--gateway", gw_url, "--ip", "127.0.0.1", "--port", port,
                               "--secret", SECRET, **seed)
    assert (code, err) == (0, "")
    assert out == f"registered GPU-001 at 127.0.0.1:{port} (服务器 GPU-001 注册成功)\n"
    assert gateway.app[GATEWAY].registry.get("GPU-001") is not None

    code, out, err = await cli(None, "list", "--gateway", gw_url, "--secret", SECRET, **seed)
    assert code == 0, err
    header, row, *rest = out.splitlines()
    assert header.split() == ["ID", "ADDRESS", "HEALTH", "BUSY", "WEIGHT", "LAST", "CHECK", "FAILURES"]
    assert row.split()[:5] == ["GPU-001", f"127.0.0.1:{port}", "healthy", "0/1", "1"]
    assert rest[-1].startswith("1 server: 1 healthy, 0 unhealthy; strategy round_robin, multi-backend on")
    # Global options before the command work too.
    code, out2, _ = await cli(None, "--gateway", gw_url, "--secret", SECRET, "list", **seed)
    assert code == 0 and "GPU-001" in out2

    code, out, err = await cli(None, "unregister", "--gateway", gw_url, "--ip", "127.0.0.1", "--port", port,
                               "--secret", SECRET, **seed)
    assert (code, out) == (0, f"unregistered GPU-001 at 127.0.0.1:{port} (服务器 GPU-001 注销成功)\n"), err
    code, out, _ = await cli(None, "list", "--gateway", gw_url, "--secret", SECRET, **seed)
    assert out.splitlines()[1].split()[:3] == ["GPU-001", f"127.0.0.1:{port}", "offline"]  # not forgotten
    assert "1 server: 0 healthy, 0 unhealthy, 1 offline; strategy" in out
    assert SECRET not in out

    # Registering again from its address brings its id back; unregister by id; remove forgets it.
    code, out, _ = await cli(gateway, "register", "--ip", "127.0.0.1", "--port", port, "--weight", "3")
    assert "GPU-001" in out
    code, out, _ = await cli(gateway, "unregister", "--server-id", "gpu-1")
    assert (code, out.split()[:2]) == (0, ["unregistered", "GPU-001"])
    code, out, err = await cli(gateway, "remove", "GPU-001")
    assert code == 0, err
    code, out, _ = await cli(gateway, "register", "--ip", "127.0.0.1", "--port", port)
    assert "GPU-002" in out


# -- 1. every command, --json parsed back -------------------------------------------------------


async def test_every_command_json(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = gateway.app[GATEWAY]
    fleet = [await nodes(), await nodes(slots=2)]
    for node in fleet:
        data = await cli_json(gateway, "register", "--ip", "127.0.0.1", "--port", str(node.port))
        assert data["success"] is True and data["node_token"] == "***"  # never printed
        node.server_id = data["server_id"]
        node.token = gw.registry.get(data["server_id"]).record.node_token
    assert [n.server_id for n in fleet] == ["GPU-001", "GPU-002"]

    servers = (await cli_json(gateway, "list"))["data"]["servers"]
    assert [(s["server_id"], s["port"], s["status"]) for s in servers] == [
        ("GPU-001", fleet[0].port, "healthy"), ("GPU-002", fleet[1].port, "healthy")]

    status = await cli_json(gateway, "status")
    assert status["status"] == "healthy" and status["fleet"]["total"] == 2
    info = await cli_json(gateway, "info")
    assert info["name"] == "photogate" and "GET /api/v1/admin/tasks/{task_id}" in info["endpoints"]

    config = await cli_json(gateway, "config", "show")
    assert config["balancer"]["strategy"] == "round_robin" and config["webhook"]["secret"] == "***"
    assert await cli_json(gateway, "config", "show", "balancer") == {"balancer.strategy": "round_robin",
                                                                     "balancer.options": {}}

    assert (await cli_json(gateway, "config", "set", "balancer.strategy", "least_busy"))["strategy"] == "least_busy"
    assert gw.strategy_name == "least_busy"
    assert await cli_json(gateway, "strategy") == {"strategy": "least_busy", "options": {}}
    data = await cli_json(gateway, "strategy", "weighted", "--option", 'weights={"GPU-002": 3}')
    assert data["options"] == {"weights": {"GPU-002": 3}} and gw.strategy_options == {"weights": {"GPU-002": 3}}
    data = await cli_json(gateway, "config", "set", "balancer.options", '{"weights": {"GPU-001": 5}}')
    assert (data["strategy"], gw.strategy_options) == ("weighted", {"weights": {"GPU-001": 5}})
    assert (await cli_json(gateway, "strategy", "round_robin"))["strategy"] == "round_robin"

    assert (await cli_json(gateway, "multi-backend", "off"))["multi_backend"] is False
    assert gw.multi_backend is False
    assert await cli_json(gateway, "multi-backend") == {"multi_backend": False}
    assert (await cli_json(gateway, "config", "set", "multi_backend.enabled", "on"))["multi_backend"] is True
    assert gw.multi_backend is True
    reloaded = await cli_json(gateway, "config", "reload")
    assert reloaded == {"success": True, "strategy": "round_robin", "multi_backend": True}

    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(40, 30))
    submitted = await cli_json(gateway, "enhance", str(photo), "--scale", "2")
    task_id = submitted["task_id"]
    assert submitted["status"] == "queued"
    await gateway.wait_done(task_id)
    listed = await cli_json(gateway, "tasks", "--status", "completed", "--limit", "5")
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]
    task = (await cli_json(gateway, "task", task_id))["task"]
    assert task["status"] == "completed" and task["attempts"] == 1
    assert task["params"] == {"scale": 2.0} and (task["width"], task["height"]) == (40, 30)
    assert task["node"]["server_id"] == task["server_id"] and task["result_mime"] == "image/png"
    assert task["timings"]["total_s"] >= task["timings"]["processing_s"] >= 0

    drained = await cli_json(gateway, "drain", "GPU-002")
    assert drained["server"]["status"] == "draining" and gw.registry.get("GPU-002").record.draining
    assert (await cli_json(gateway, "undrain", "2"))["server"]["status"] == "healthy"
    assert (await cli_json(gateway, "remove", "GPU-002"))["server_id"] == "GPU-002"
    assert [s.server_id for s in gw.registry.all()] == ["GPU-001"]
    assert (await cli_json(gateway, "unregister", "--ip", "127.0.0.1", "--port", str(fleet[0].port)))["success"]


async def test_human_output(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    task_id = await gateway.submit(image_bytes(20, 10))
    await gateway.wait_done(task_id)

    code, out, _ = await cli(gateway, "status")
    assert code == 0
    assert out.splitlines()[0].startswith(f"gateway   {url(gateway)}  healthy  (photogate ")
    assert "fleet     1 server: 1 healthy, 0 unhealthy, 0 draining; 0/1 slots busy" in out
    assert "tasks     0 queued, 0 processing, 1 completed, 0 failed" in out
    code, out, _ = await cli(gateway, "info")
    assert "  POST /api/v1/enhance" in out.splitlines()
    code, out, _ = await cli(gateway, "config", "show")
    assert "balancer.strategy = round_robin" in out.splitlines() and "webhook.secret = ***" in out.splitlines()
    code, out, _ = await cli(gateway, "strategy")
    assert out == "strategy: round_robin\n"
    code, out, _ = await cli(gateway, "strategy", "least_busy")
    assert out == "strategy is now least_busy; work in flight is unaffected\n"
    code, out, _ = await cli(gateway, "multi-backend", "off")
    assert out == "multi-backend off: all work goes to one primary server\n"
    code, out, _ = await cli(gateway, "tasks")
    header, row = out.splitlines()
    assert header.split() == ["TASK", "STATUS", "SERVER", "TRIES", "SIZE", "CREATED", "ERROR"]
    assert row.split()[:5] == [task_id, "completed", "GPU-001", "1", "20x10"]
    code, out, _ = await cli(gateway, "task", task_id)
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["status"] == "completed (处理完成)"
    assert lines["server"] == f"GPU-001 (127.0.0.1:{node.port}, healthy)"
    assert lines["input"].startswith("image/png, 20x10, ")
    assert lines["result"].startswith("image/png, ") and lines["result"].endswith(f"/api/v1/download/{task_id}")
    code, out, _ = await cli(gateway, "drain", "GPU-001")
    assert out == "GPU-001 is draining: it gets no new work; 0 tasks in flight will finish\n"
    code, out, _ = await cli(gateway, "undrain", "GPU-001")
    assert out == "GPU-001 takes new work again (healthy)\n"


def test_credentials_are_masked_and_ids_normalised() -> None:
    config = {"wechat": {"secret": "s3", "apiv3_key": "k", "merchant_private_key": "/etc/key.pem", "appid": "wx1"},
              "webhook": {"secret": "***"}, "admin": {"token": ""}, "node_token": "t"}
    assert masked(config) == {"wechat": {"secret": "***", "apiv3_key": "***", "merchant_private_key": "***",
                                          "appid": "wx1"},
                               "webhook": {"secret": "***"}, "admin": {"token": ""}, "node_token": "***"}
    ids = [parse_server_id(v) for v in ("GPU-003", "gpu-3", "3", " 12 ")]
    assert ids == ["GPU-003", "GPU-003", "GPU-003", "GPU-012"]


# -- exit codes -------------------------------------------------------------------------------


async def test_exit_1_the_gateway_said_no(gateway: Gateway, tmp_path: Path) -> None:
    code, out, err = await cli(gateway, "drain", "GPU-001", "--admin-token", "wrong-token")
    assert (code, out, err) == (1, "", "photogate-admin: wrong admin token\n")
    code, out, err = await cli(gateway, "--json", "drain", "GPU-001", "--admin-token", "wrong-token")
    assert code == 1 and json.loads(out) == {"error": "wrong admin token", "exit_status": 1, "http_status": 403}
    assert "wrong-token" not in out + err

    code, _, err = await cli(gateway, "list", "--secret", "not-the-secret")
    assert (code, err) == (1, "photogate-admin: wrong secret\n")
    code, _, err = await cli(gateway, "drain", "GPU-009")
    assert (code, err) == (1, "photogate-admin: no server GPU-009\n")
    code, _, err = await cli(gateway, "unregister", "--ip", "127.0.0.1", "--port", "9")
    assert (code, err) == (1, "photogate-admin: no such server registered\n")
    code, _, err = await cli(gateway, "task", "0" * 32)
    assert code == 1 and "no task 000" in err
    code, _, err = await cli(gateway, "strategy", "no_such_strategy")
    assert code == 1 and "no_such_strategy" in err
    code, _, err = await cli(gateway, "register", "--ip", "not-an-ip", "--port", "8000")
    assert (code, err) == (1, "photogate-admin: ip: not an IP address: 'not-an-ip'\n")
    # No node up: the public API says 503, and that is the gateway saying no.
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes())
    code, _, err = await cli(gateway, "enhance", str(photo))
    assert code == 1 and "服务暂时不可用" in err


async def test_exit_1_a_failed_task(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    node.mode = "reject400"
    await gateway.register(node)
    photo = tmp_path / "p.png"
    photo.write_bytes(image_bytes())
    code, out, err = await cli(gateway, "enhance", str(photo), "--wait")
    assert code == 1 and "failed: " in err and "cannot decode image" in err
    assert "task" in out  # the progress lines came before the verdict
    assert not list(tmp_path.glob("p_enhanced*"))


async def test_exit_2_usage(gateway: Gateway, tmp_path: Path) -> None:
    assert (await cli(gateway))[0] == 2
    code, _, err = await cli(gateway, "frobnicate")
    assert code == 2 and "invalid choice: 'frobnicate'" in err
    code, _, err = await cli(gateway, "register", "--ip", "127.0.0.1", "--port", "99999")
    assert code == 2 and "expected a port number from 1 to 65535" in err
    code, _, err = await cli(gateway, "unregister")
    assert (code, err) == (2, "photogate-admin: unregister: give --ip and --port, or --server-id\n")
    code, _, err = await cli(gateway, "task", "../servers/GPU-001")
    assert code == 2 and "expected a 32-character task id" in err
    code, _, err = await cli(gateway, "drain", "node-a")
    assert code == 2 and "expected a server id such as GPU-003" in err
    code, out, err = await cli(gateway, "config", "set", "health_check.interval", "5", "--json")
    assert code == 2 and err == ""  # --json: the error once, as JSON on stdout
    assert "health_check.interval is not changeable at runtime; edit config.yaml and send SIGHUP" in out
    assert "photogate-admin config reload" in json.loads(out)["error"]
    code, _, err = await cli(gateway, "config", "set", "multi_backend.enabled", "maybe")
    assert code == 2 and "expected on or off" in err
    code, _, err = await cli(gateway, "drain", "GPU-001", env={"PHOTOGATE_ADMIN_TOKEN": ""})
    assert code == 2 and "needs the admin token" in err
    code, _, err = await cli(gateway, "list", env={"WEBHOOK_SECRET": ""})
    assert code == 2 and "needs the webhook secret" in err
    code, _, _ = await cli(gateway, "list", env={"WEBHOOK_SECRET": "", "SHARED_SECRET": SECRET})
    assert code == 0
    code, _, err = await cli(gateway, "enhance", str(tmp_path / "missing.jpg"))
    assert code == 2 and "no such file" in err
    (tmp_path / "p.png").write_bytes(image_bytes())
    code, _, err = await cli(gateway, "enhance", str(tmp_path / "p.png"), "--out", str(tmp_path / "no" / "x.png"))
    assert code == 2 and "no such directory" in err
    code, _, err = await cli(gateway, "status", "--gateway", "ftp://example.org")
    assert code == 2 and "expected an http:// or https:// URL" in err
    code, out, _ = await cli(gateway, "drain", "--help")
    assert code == 0 and "usage: photogate-admin drain" in out


async def test_exit_3_unreachable(aiohttp_server, closed_port: int) -> None:  # type: ignore[no-untyped-def]
    closed = f"http://127.0.0.1:{closed_port}"
    code, out, err = await cli(None, "status", "--gateway", closed)
    assert (code, out) == (3, "")
    assert err == f"photogate-admin: cannot reach the gateway at {closed}: Connection refused\n"
    code, out, _ = await cli(None, "list", "--json", "--gateway", closed)
    assert code == 3 and json.loads(out)["gateway"] == closed

    # https:// to a plain-HTTP port: the TLS handshake fails, said as such.
    plain = await aiohttp_server(web.Application())
    code, _, err = await cli(None, "status", "--gateway", f"https://127.0.0.1:{plain.port}")
    assert code == 3 and f"cannot reach the gateway at https://127.0.0.1:{plain.port}: TLS handshake failed" in err

    # A gateway that accepts the connection and never answers: --timeout.
    hang = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await hang.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/api/v1/health", never)
    server = await aiohttp_server(app)
    silent = str(server.make_url("")).rstrip("/")
    code, _, err = await cli(None, "status", "--gateway", silent, "--timeout", "0.2")
    assert (code, err) == (3, f"photogate-admin: no answer from the gateway at {silent} within 0.2 s (--timeout)\n")
    hang.set()


async def test_redirects_are_not_followed_with_credentials(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"success": True})

    other = web.Application()
    other.router.add_post("/api/v1/admin/servers/GPU-001/drain", elsewhere)
    target = await aiohttp_server(other)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(target.make_url(request.path)))

    front = web.Application()
    front.router.add_post("/api/v1/admin/servers/GPU-001/drain", moved)
    server = await aiohttp_server(front)
    code, _, err = await cli(None, "drain", "GPU-001", "--gateway", str(server.make_url("")).rstrip("/"))
    assert code == 1 and "redirect (302)" in err and "not followed" in err
    assert seen == [] and ADMIN_TOKEN not in err


# -- 3. drain: in-flight work finishes, new work goes elsewhere ------------------------------


async def test_drain_lets_in_flight_finish_and_sends_new_work_elsewhere(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    slow = GatedNode()
    await slow.start()
    try:
        await gateway.register(slow)  # GPU-001, the only node: the first task goes there
        first = await gateway.submit()
        await wait_until(lambda: slow.busy == 1, 10, "the first task to reach the slow node")
        fast = await nodes()
        await gateway.register(fast)  # GPU-002

        code, out, err = await cli(gateway, "drain", "GPU-001")
        assert (code, out) == (0, "GPU-001 is draining: it gets no new work; 1 task in flight will finish\n"), err
        code, out, _ = await cli(gateway, "list")
        assert out.splitlines()[1].split()[:4] == ["GPU-001", f"127.0.0.1:{slow.port}", "draining", "1/1"]

        later = [await gateway.submit() for _ in range(3)]
        finals = [await gateway.wait_done(t) for t in later]
        assert [f["server_id"] for f in finals] == ["GPU-002"] * 3
        assert (await gateway.status(first))["status"] == "processing"

        slow.gate.set()
        done = await gateway.wait_done(first)
        assert (done["status"], done["server_id"]) == ("completed", "GPU-001")
        assert (slow.jobs, fast.jobs) == (1, 3)

        code, _, _ = await cli(gateway, "undrain", "GPU-001")
        assert code == 0
        again = [await gateway.wait_done(await gateway.submit()) for _ in range(2)]
        assert {f["server_id"] for f in again} == {"GPU-001", "GPU-002"}  # round robin uses it again
    finally:
        slow.gate.set()
        await slow.stop()


# -- 4. enhance --wait: progress, saved result ------------------------------------------------


async def test_enhance_wait_saves_the_result_with_a_progress_bar_on_a_tty(  # type: ignore[no-untyped-def]
        gateway: Gateway, nodes, tmp_path: Path) -> None:
    await gateway.register(await nodes())
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(32, 24))
    out_path = tmp_path / "out" / "big.png"
    out_path.parent.mkdir()
    tty = Tty()
    code, out, err = await cli(gateway, "enhance", str(photo), "--wait", "--out", str(out_path), stdout=tty)
    assert code == 0, err
    assert "\r[" in out and "\r[##############################] 100%  completed" in out
    assert out.endswith(f"\nsaved the enhanced image to {out_path} (image/png, {_size(out_path)})\n")
    with Image.open(out_path) as im:
        im.load()
        assert (im.format, im.size) == ("PNG", (64, 48))
    assert not list(out_path.parent.glob("*.part"))


async def test_enhance_wait_prints_plain_lines_when_not_a_tty(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = GatedNode()
    await node.start()
    try:
        await gateway.register(node)
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(image_bytes(30, 20, fmt="JPEG"))
        live = io.StringIO()
        run_cli = asyncio.create_task(cli(gateway, "enhance", str(photo), "--wait", "--scale", "2", stdout=live))
        await wait_until(lambda: node.busy == 1, 10, "the task to reach the node")
        # Open the gate only once the CLI has seen (and printed) the processing state.
        await wait_until(lambda: "processing on GPU-001" in live.getvalue(), 10, "the CLI to report processing")
        node.gate.set()
        code, out, err = await run_cli
    finally:
        node.gate.set()
        await node.stop()
    assert code == 0, err
    saved = tmp_path / "photo_enhanced.png"
    lines = out.splitlines()
    assert "\r" not in out
    states = [line.split(None, 3)[3] for line in lines[:-1]]
    assert states[-2:] == ["processing on GPU-001", "completed"]
    assert lines[-1] == f"saved the enhanced image to {saved} (image/png, {_size(saved)})"
    with Image.open(saved) as im:
        assert im.size == (60, 40)


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


async def test_enhance_json_is_one_document(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(16, 16))
    code, out, err = await cli(gateway, "enhance", str(photo), "--out", str(tmp_path), "--json", stdout=Tty())
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == "completed" and data["saved_to"] == str(tmp_path / "photo_enhanced.png")
    assert data["bytes"] == (tmp_path / "photo_enhanced.png").stat().st_size


# -- the script and the console entry as real processes ----------------------------------------


async def _run_process(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(REPO),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bin_script_against_a_gateway_process(gateway_process, nodes, closed_port: int) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    gw = gateway_process("health_check:\n  interval: 0.3\n")
    gw.start()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
    # No credentials in the environment: the seed's flags carry them.
    env = {k: v for k, v in os.environ.items()
           if k not in ("GATEWAY_URL", "WEBHOOK_SECRET", "SHARED_SECRET", "PHOTOGATE_ADMIN_TOKEN")}
    script = [sys.executable, str(REPO / "bin" / "photogate-admin")]
    seed = ["--gateway", gw.url, "--ip", "127.0.0.1", "--port", str(node.port), "--secret", SECRET]

    code, out, err = await _run_process(*script, "register", *seed, env=env)
    assert (code, out) == (0, f"registered GPU-001 at 127.0.0.1:{node.port} (服务器 GPU-001 注册成功)\n"), err
    code, out, err = await _run_process(*script, "list", "--gateway", gw.url, "--secret", SECRET, env=env)
    assert code == 0 and out.splitlines()[1].split()[:3] == ["GPU-001", f"127.0.0.1:{node.port}", "healthy"], err
    code, out, err = await _run_process(*script, "--json", "status", env={**env, "GATEWAY_URL": gw.url})
    assert code == 0 and json.loads(out)["fleet"]["total"] == 1, err

    code, out, err = await _run_process(*script, "--json", "drain", "GPU-001",
                                        env={**env, "GATEWAY_URL": gw.url, "PHOTOGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert code == 0 and json.loads(out)["server"]["status"] == "draining", err
    console = Path(sys.executable).parent / "photogate-admin"
    unregister = [str(console)] if console.exists() else script  # the console script from setup.cfg
    code, out, err = await _run_process(*unregister, "unregister", *seed, env=env)
    assert (code, out.split()[:2]) == (0, ["unregistered", "GPU-001"]), err
    code, out, err = await _run_process(*script, "list", "--gateway", gw.url, "--secret", "wrong", env=env)
    assert (code, err) == (1, "photogate-admin: wrong secret\n")
    code, out, err = await _run_process(*script, "status", "--gateway", f"http://127.0.0.1:{closed_port}", env=env)
    assert code == 3 and "cannot reach the gateway" in err and "Traceback" not in err
