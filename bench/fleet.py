"""What the benchmarks share: ports, photos, a photogate process and its config, simulated
nodes, nginx and HAProxy in front of them. Loopback only; every wait is bounded."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from PIL import Image

SECRET = "bench-secret-0123456789"
NODE_TOKEN = "bench-node-token-0123456789"
PY = sys.executable
#: A bench gateway's config: the secret, nodes on loopback, quiet logs (append more YAML).
GATEWAY_CONFIG = f"webhook: {{secret: {SECRET}, allowed_node_networks: [127.0.0.0/8]}}\nlogging: {{level: warning}}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg(width: int = 64, height: int = 48, color: tuple[int, int, int] = (10, 20, 30), quality: int = 75) -> bytes:
    """A plain JPEG photo of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (aiohttp.ClientError, OSError, KeyError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


class Procs:
    """Processes started for one run; all stopped (TERM, then KILL) on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()


def gateway_argv(config: Path, port: int, data_dir: Path) -> list[str]:
    return [PY, "-m", "photogate", "--config", str(config), "--port", str(port), "--data-dir", str(data_dir)]


def sim_node_argv(port: int, speed: float, slots: int, *, gateway: str | None, state_dir: Path,
                  jitter: float = 0.0) -> list[str]:
    argv = [PY, "-m", "gpunode", "--simulate", "--speed", str(speed), "--slots", str(slots), "--jitter", str(jitter),
            "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir), "--queue-size", "64"]
    if gateway:
        argv += ["--gateway", gateway, "--secret", SECRET, "--advertise-ip", "127.0.0.1"]
    else:
        argv += ["--token", NODE_TOKEN]
    return argv


#: wrk's Lua script for status polls: ``WRK_SCRIPT % ids_file`` (one task id per line).
WRK_SCRIPT = '''
ids = {}
for line in io.lines("%s") do ids[#ids + 1] = line end
counter = 0
request = function()
    counter = counter + 1
    return wrk.format("GET", "/api/v1/status/" .. ids[(counter %% #ids) + 1])
end
'''


def ensure_binary(name: str, package: str) -> str | None:
    """The path of ``name``; installs the Debian package when missing and running as root."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, timeout=600,
                       check=False)
        return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    return None


def speed_weights(speeds: list[float]) -> list[int]:
    """Integer weights proportional to the nodes' speeds (the fastest gets 100; within 1 %),
    for nginx ``weight=``, HAProxy ``weight`` (1-256) and photogate's ``weighted``."""
    return [max(1, round(100 * s / max(speeds))) for s in speeds]


def nginx_conf(workdir: Path, port: int, node_ports: list[int], weights: list[int] | None = None) -> Path:
    weights = weights or [1] * len(node_ports)
    servers = "\n".join(f"        server 127.0.0.1:{p} weight={w};" for p, w in zip(node_ports, weights))
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    upstream nodes {{
        least_conn;
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;
        # Bodies and answers stay in memory: nginx's workers (user nobody when started
        # as root) could not write temp files in this folder, and failed big photos.
        client_body_buffer_size 64m;
        proxy_buffers 256 256k;
        proxy_max_temp_file_size 0;
        location / {{
            proxy_pass http://nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
""")
    return conf


def haproxy_conf(workdir: Path, port: int, node_ports: list[int], maxconn: int | None,
                 weights: list[int] | None = None) -> Path:
    limit = f" maxconn {maxconn}" if maxconn else ""
    weights = weights or [1] * len(node_ports)
    servers = "\n".join(f"    server n{i} 127.0.0.1:{p} weight {w}{limit}"
                        for i, (p, w) in enumerate(zip(node_ports, weights)))
    conf = workdir / f"haproxy-{maxconn or 'nolimit'}.cfg"
    conf.write_text(f"""
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout queue 600s
frontend fe
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance leastconn
{servers}
""")
    return conf
