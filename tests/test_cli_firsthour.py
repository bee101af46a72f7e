"""An operator's first hour with the command lines (issue 15, items 7, 11, 12).

gpunode as a real process: ``--token`` with ``$GATEWAY_URL`` exported, a busy port, the
``listening`` event; its ``--help`` and photogate's; photogate-admin's durations, ``--json``
errors, ``wait`` and ``download`` against an in-process gateway; logs without colours off a
terminal; the quickstart's Ctrl-C; an install without setuptools' package warning."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from support import ADMIN_TOKEN, REPO, SECRET, Gateway, image_bytes, reported_port, wait_until

from photogate import cli as photogate_cli
from photogate import logsetup
from photogate.admincli import duration, run

ANSI = "\x1b["


def gpunode_command() -> list[str]:
    return [sys.executable, "-m", "gpunode"]


def bare_env(**extra: str) -> dict[str, str]:
    """The environment without any of gpunode's variables, plus ``extra``."""
    ours = ("GATEWAY_URL", "SHARED_SECRET", "GPUNODE_", "PORT", "NO_COLOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return {**env, **extra}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _start_node(tmp_path: Path, *argv: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, Path]:
    log = tmp_path / "gpunode.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *gpunode_command(), "--host", "127.0.0.1", "--simulate", "--state-dir", str(tmp_path / "state"), *argv,
            stdout=out, stderr=out, env=env)
    return proc, log


def _events(log: Path) -> list[dict[str, object]]:
    events = []
    for line in log.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


# -- 7. --token with $GATEWAY_URL exported ------------------------------------------------------


async def test_token_runs_standalone_even_with_gateway_url_exported(tmp_path: Path, http, closed_port: int) -> None:  # type: ignore[no-untyped-def]
    # As the README's admin section suggests: GATEWAY_URL exported, no secret anywhere.
    env = bare_env(GATEWAY_URL=f"http://127.0.0.1:{closed_port}")
    proc, log = await _start_node(tmp_path, "--port", "0", "--token", "x", env=env)
    try:
        async def listening() -> int | None:
            assert proc.returncode is None, log.read_text()[-3000:]
            return reported_port(log, "listening")

        await wait_until(listening, 60, "the standalone node to listen")
        url = f"http://127.0.0.1:{reported_port(log, 'listening')}"
        async with http.get(f"{url}/health") as resp:
            health = await resp.json()
        assert (health["registered"], health["server_id"], health["mode"]) == (False, None, "standalone")
        body = image_bytes(16, 16)
        async with http.post(f"{url}/v1/enhance", data=body,
                             headers={"Authorization": "Bearer x", "Content-Type": "image/png"}) as resp:
            assert resp.status == 200 and await resp.read() == body  # a simulated node answers its input
        ignored = [e for e in _events(log) if e.get("event") == "gateway_url_ignored"]
        assert len(ignored) == 1 and "--gateway" in str(ignored[0]["hint"])
        assert not [e for e in _events(log) if str(e.get("event", "")).startswith("regist")]
    finally:
        await _stop(proc)


def gpunode_run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A gpunode command that exits by itself (a usage error, --help)."""
    return subprocess.run([*gpunode_command(), *argv], capture_output=True, text=True, timeout=60, env=env)


def test_gateway_url_from_the_environment_without_a_secret_says_what_happened() -> None:
    result = gpunode_run("--port", "0", env=bare_env(GATEWAY_URL="http://127.0.0.1:9"))
    assert result.returncode == 2
    assert "$GATEWAY_URL is set (http://127.0.0.1:9)" in result.stderr
    assert "For a standalone node pass --token T (then $GATEWAY_URL is ignored) or unset GATEWAY_URL" in result.stderr


def test_gateway_and_token_flags_together_are_refused() -> None:
    result = gpunode_run("--gateway", "http://127.0.0.1:9", "--token", "t", env=bare_env(SHARED_SECRET="s"))
    assert result.returncode == 2
    assert "--gateway and --token: give one" in result.stderr


# -- 11. a busy port; listening once serving -----------------------------------------------------


async def test_busy_port_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *gpunode_command(), "--host", "127.0.0.1", "--port", str(port), "--token", "x", "--simulate",
            "--state-dir", str(tmp_path / "state"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=bare_env())
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert out == b""
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith(f"gpunode: cannot listen on 127.0.0.1:{port}: ")
    assert "choose another --port (0: any free port) or stop what holds it" in lines[0]


async def test_listening_is_logged_once_the_node_serves(tmp_path: Path, http) -> None:  # type: ignore[no-untyped-def]
    proc, log = await _start_node(tmp_path, "--port", "0", "--token", "x", env=bare_env())
    try:
        async def listening() -> bool:
            assert proc.returncode is None, log.read_text()[-3000:]
            return reported_port(log, "listening") is not None

        await wait_until(listening, 60, "the listening event")
        port = reported_port(log, "listening")
        # The first request after the event is answered: no retry, no refused connection.
        async with http.get(f"http://127.0.0.1:{port}/health") as resp:
            assert resp.status == 200
        names = [e.get("event") for e in _events(log)]
        assert names.count("listening") == 1 and names.index("starting") < names.index("listening")
    finally:
        await _stop(proc)


# -- 12. --help ------------------------------------------------------------------------------------


def test_gpunode_help_explains_every_flag_and_variable() -> None:
    result = gpunode_run("--help", env=bare_env())
    assert result.returncode == 0
    text = result.stdout
    flat = " ".join(text.split())
    assert "0 = never (default 60.0)" in flat  # --gateway-check-interval
    assert "--max-input-pixels MAX_INPUT_PIXELS largest photo accepted, in pixels" in flat
    assert "--log-level {debug,info,warning,error} least severe log events written (default info)" in flat
    for var in ("GATEWAY_URL", "SHARED_SECRET", "GPUNODE_SECRET_FILE", "PORT", "GPUNODE_STATE_DIR",
                "GPUNODE_TOKEN", "GPUNODE_MODEL", "GPUNODE_ADVERTISE_IP", "NO_COLOR"):
        assert re.search(rf"^  {var} ", text, re.M), var


def test_photogate_help_lists_its_environment_variables() -> None:
    text = photogate_cli.build_parser().format_help()
    assert "environment (overrides the config file's key; a flag overrides both):" in text
    for var, key in (("WEBHOOK_SECRET", "webhook.secret"), ("PHOTOGATE_ADMIN_TOKEN", "admin.token"),
                     ("PHOTOGATE_REDIS_URL", "storage.redis_url"), ("WECHAT_APP_SECRET", "wechat.secret")):
        assert re.search(rf"^  {var} +{re.escape(key)}$", text, re.M), var


# -- 12. logs without colours off a terminal --------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _gateway_dev_line(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stdout", stream)
    logsetup.configure_logging(dev=True)
    structlog.get_logger("t").info("gateway_listening", port=1)
    return stream.getvalue()


def test_dev_logs_have_no_colours_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    line = _gateway_dev_line(monkeypatch, io.StringIO())
    assert "gateway_listening" in line and ANSI not in line
    assert ANSI in _gateway_dev_line(monkeypatch, Tty())  # a terminal keeps its colours
    monkeypatch.setenv("NO_COLOR", "1")
    line = _gateway_dev_line(monkeypatch, Tty())
    assert "gateway_listening" in line and ANSI not in line


async def test_gpunode_dev_log_file_has_no_colours(tmp_path: Path) -> None:
    proc, log = await _start_node(tmp_path, "--port", "0", "--token", "x", "--dev", env=bare_env())
    try:
        async def listening() -> bool:
            assert proc.returncode is None, log.read_text()[-3000:]
            return "listening" in log.read_text()

        await wait_until(listening, 60, "the listening event")
    finally:
        await _stop(proc)
    text = log.read_text()
    assert "listening" in text and "port=" in text and ANSI not in text


# -- 12. photogate-admin: durations, --json errors once, wait, download ------------------------------


def test_human_durations() -> None:
    cases = {0.0034: "3 ms", 0.45: "450 ms", 1: "1 s", 17.8: "17.8 s", 42.0: "42 s",
             185: "3 min 5 s", 180: "3 min", 3599: "59 min 59 s", 7440: "2 h 4 min", 7499: "2 h 4 min",
             7200: "2 h", 90061: "1 d 1 h", None: "—"}
    assert {k: duration(k) for k in cases} == cases


def url(gw: Gateway) -> str:
    return str(gw.client.make_url("")).rstrip("/")


async def admin(gw: Gateway, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {"GATEWAY_URL": url(gw), "WEBHOOK_SECRET": SECRET, "PHOTOGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    code = await run(list(argv), stdout=out, env=env, stderr=err)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


async def test_status_prints_a_human_uptime(gateway: Gateway) -> None:
    code, out, err = await admin(gateway, "status")
    assert code == 0, err
    assert re.search(r"\(photogate \S+, up (\d+ ms|\d+(\.\d)? s|\d+ min( \d+ s)?)\)$", out.splitlines()[0]), out


async def test_json_errors_are_printed_once(gateway: Gateway) -> None:
    code, out, err = await admin(gateway, "--json", "task", "0" * 32)
    assert code == 1
    assert err == ""
    data = json.loads(out)
    assert data["exit_status"] == 1 and data["http_status"] == 404 and data["error"]
    code, out, err = await admin(gateway, "task", "0" * 32)  # without --json: the text, on stderr
    assert (code, out) == (1, "") and err.startswith("photogate-admin: ") and err.count("\n") == 1


async def test_wait_and_download_a_submitted_task(gateway: Gateway, nodes, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    node = await nodes()
    await gateway.register(node)
    task_id = await gateway.submit(image_bytes(20, 10))
    code, out, err = await admin(gateway, "wait", task_id)
    assert code == 0, err
    assert out.splitlines()[-1] == (f"task {task_id} completed on GPU-001; "
                                    f"save it with `photogate-admin download {task_id}`")
    expected = await (await gateway.client.get(f"/api/v1/download/{task_id}")).read()

    target = tmp_path / "result.png"
    code, out, err = await admin(gateway, "download", task_id, "-o", str(target))
    assert code == 0, err
    assert target.read_bytes() == expected
    assert out == f"saved the enhanced image to {target} (image/png, {len(expected)} B)\n"

    monkeypatch.chdir(tmp_path)  # no -o: the gateway's own name, in the current folder
    code, out, err = await admin(gateway, "--json", "download", task_id)
    assert code == 0, err
    saved = tmp_path / f"enhanced_{task_id}.png"
    assert json.loads(out) == {"task_id": task_id, "saved_to": str(saved), "bytes": len(expected),
                               "content_type": "image/png"}
    assert saved.read_bytes() == expected
    assert not list(tmp_path.glob("*.part"))


async def test_wait_and_download_a_failed_task_exit_1(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    node.mode = "reject400"
    await gateway.register(node)
    task_id = await gateway.submit()
    code, out, err = await admin(gateway, "wait", task_id)
    assert code == 1 and err.startswith(f"photogate-admin: task {task_id} failed: ")
    target = tmp_path / "out"
    target.mkdir()
    code, out, err = await admin(gateway, "download", task_id, "-o", str(target))
    assert code == 1 and "the task failed, there is nothing to download" in err
    assert list(target.iterdir()) == []


async def test_download_of_a_running_task_says_it_is_not_ready(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    node.mode = "hang"  # the task stays processing for the whole test
    await gateway.register(node)
    task_id = await gateway.submit()
    await wait_until(lambda: node.busy == 1, 10, "the task to reach the node")
    code, out, err = await admin(gateway, "download", task_id, "-o", str(tmp_path / "x.png"))
    assert code == 1 and "the result is not ready yet (status: processing)" in err
    assert not (tmp_path / "x.png").exists()
    code, out, err = await admin(gateway, "wait", task_id, "--max-wait", "0.3")
    assert code == 1 and f"wait again with `photogate-admin wait {task_id}`" in err


# -- 12. the quickstart: Ctrl-C stops the node first; plain log files --------------------------------


@pytest.mark.timeout(240)
async def test_quickstart_ctrl_c_unregisters_the_node_and_logs_have_no_colours(tmp_path: Path) -> None:
    logs = {name: REPO / "data" / "demo" / f"{name}.log" for name in ("photogate", "gpunode")}
    offsets = {name: path.stat().st_size if path.exists() else 0 for name, path in logs.items()}
    photo = tmp_path / "tiny.png"
    photo.write_bytes(image_bytes(24, 16))
    # A session of its own, so the test can signal its whole process group as a terminal's
    # Ctrl-C does, without signalling pytest.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bin" / "demo.py"), "--port", "0", "--node-port", "0", "--photo", str(photo),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO, start_new_session=True,
        env={**bare_env(), "PYTHONUNBUFFERED": "1"})
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        while "Ctrl-C stops both." not in "".join(seen):
            line = await asyncio.wait_for(proc.stdout.readline(), 180)
            assert line, "".join(seen)
            seen.append(line.decode())
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole foreground group
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, "".join(seen) + rest.decode()

    def written(name: str) -> str:
        with logs[name].open("rb") as fh:
            fh.seek(offsets[name])
            return fh.read().decode()

    node_events = [json.loads(line).get("event") for line in written("gpunode").splitlines() if line.startswith("{")]
    assert "unregistered" in node_events and "unregister_failed" not in node_events, node_events
    gateway_log = written("photogate")
    assert "gateway_listening" in gateway_log and ANSI not in gateway_log


# -- 12. an install without setuptools' "photogate.web is absent" warning -----------------------------


def test_build_lists_every_package_and_ships_the_pages(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    for name in ("src", "strategies"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "-d", str(tmp_path / "lib")],
        cwd=tree, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "photogate.web" not in result.stdout + result.stderr
    for page in ("web/try-it.html", "web/dashboard.html", "web/login.html", "web/static/style.css",
                 "web/static/try-it.js", "web/static/dashboard.js"):
        assert (tmp_path / "lib" / "photogate" / page).is_file(), page
