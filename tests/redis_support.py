"""A real ``redis-server`` for the tests (issue 8): on a free port, in a temp dir, no fakes."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support import ChildProcess, free_port

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                                else None)


def need_redis() -> str:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; bin/test installs it as root)")
    return REDIS_SERVER


class RedisServer(ChildProcess):
    """One ``redis-server`` process; ``persist`` turns on the AOF (fsync always) for kill tests."""

    def __init__(self, workdir: Path, *, persist: bool = False) -> None:
        self.binary = need_redis()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persist = persist
        self.started_once = False
        self._log_offset = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on ``self.port``. redis-server cannot bind port 0 (it means "no TCP"), so the first
        start takes a free port and, should another process take it first, tries another; a
        restart keeps the port (a test restarting Redis expects it back where it was)."""
        for attempt in range(5):
            try:
                return self._start_once()
            except _PortTaken:
                if self.started_once or attempt == 4:
                    raise
                self.port = free_port()

    def _start_once(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        log_file = self.dir / "redis.log"
        self._log_offset = log_file.stat().st_size if log_file.exists() else 0
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            # Ours, not whatever else answers on that port (another suite's Redis, say).
            if self._answering_pid() == self.proc.pid:
                self.started_once = True
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = log_file.read_bytes()[self._log_offset:].decode(errors="replace") if log_file.exists() else ""
                if self.proc.poll() is not None and "Address already in use" in log:
                    raise _PortTaken(log[-2000:])
                raise RuntimeError(f"redis-server did not start on port {self.port}: {log[-2000:]}")
            time.sleep(0.02)

    def _answering_pid(self) -> int | None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"INFO server\r\n")
                answer = b""
                while b"process_id:" not in answer or not answer.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        return None
                    answer += chunk
        except OSError:
            return None
        match = re.search(rb"process_id:(\d+)", answer)
        return int(match.group(1)) if match else None


class _PortTaken(RuntimeError):
    """redis-server exited: another process bound the port between free_port() and its bind."""


def unique_prefix() -> str:
    """Keys of one test, apart from every other test's on the shared server."""
    return f"t{uuid.uuid4().hex[:10]}:"
