"""Ports of the processes the tests start, without the free-port race: ``photogate --port 0``
binds a free port and says which in ``gateway_listening``, logged only once that port serves (a
port it cannot have is a clear error, not a traceback); redis-server, which cannot bind port 0,
moves to another port when its port was taken, and is told apart from another Redis there."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from redis_support import RedisServer
from support import ADMIN_TOKEN, SECRET, reported_port, wait_until

from photogate import listen


def _gateway(tmp_path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "photogate", "--port", str(port), "--data-dir", str(tmp_path / "d")],
            stdout=out, stderr=subprocess.STDOUT,
            env={"WEBHOOK_SECRET": SECRET, "PHOTOGATE_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"})


async def test_port_zero_is_reported_once_it_serves(tmp_path: Path) -> None:
    log = tmp_path / "gw.log"
    proc = _gateway(tmp_path, 0, log)
    try:
        def reported() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return reported_port(log, "gateway_listening") is not None

        await wait_until(reported, 30, "gateway_listening in the log")
        port = reported_port(log, "gateway_listening")
        assert port is not None and port > 0
        # The first request right after the line is answered: the line is never early.
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/api/v1/health") as resp:
            assert resp.status == 200, await resp.text()
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        # After the app's start-up (the store open, the monitor running), never before it.
        assert events.index("gateway_started") < events.index("gateway_listening"), events
        assert f'"url": "http://127.0.0.1:{port}"' in log.read_text()
    finally:
        proc.terminate()
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10) == 0


async def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        log = tmp_path / "gw.log"
        proc = _gateway(tmp_path, port, log)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
    text = log.read_text()
    assert code == 2, text
    assert f"photogate: cannot listen on 127.0.0.1:{port}:" in text and "Address already in use" in text
    assert "Traceback" not in text and "gateway_listening" not in text


def test_port_zero_is_one_port_for_every_address() -> None:
    try:
        sockets = listen.bind("", 0)  # the wildcard: 0.0.0.0 and, where there is IPv6, ::
    except OSError as exc:  # pragma: no cover - a host without any wildcard address
        pytest.fail(f"cannot bind the wildcard address here: {exc}")
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and listen.bound_port(sockets) in ports and 0 not in ports
        families = [s.family for s in sockets]
        assert len(families) == len(set(families))
    finally:
        for s in sockets:
            s.close()


def test_bound_sockets_refuse_until_the_app_listens() -> None:
    sockets = listen.bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", listen.bound_port(sockets)), timeout=5).close()
    finally:
        for s in sockets:
            s.close()


def test_redis_moves_to_another_port_when_its_port_was_taken(tmp_path: Path) -> None:
    other = RedisServer(tmp_path / "other")  # another suite's Redis got there first: it answers PING too
    other.start()
    redis = RedisServer(tmp_path / "redis")
    redis.port = taken = other.port
    try:
        redis.start()
        assert redis.port != taken and redis.proc is not None
        assert redis._answering_pid() == redis.proc.pid != other._answering_pid()
        assert "Address already in use" in (tmp_path / "redis" / "redis.log").read_text()
        moved = redis.port
        redis.kill()
        redis.start()  # a restart keeps its port
        assert redis.port == moved and redis._answering_pid() == redis.proc.pid
    finally:
        redis.stop()
        other.stop()
