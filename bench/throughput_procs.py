"""Processes for bench/throughput.py: photogate gateways, simulated nodes, the bare aiohttp
pass-through, HAProxy and Redis, each started on loopback and found by the port it bound.

Children that can bind port 0 do (photogate, gpunode, the bare app); their port is read from
the kernel's socket table for their pid (``/proc``), so it is found at any log level (the
gateway's ``gateway_listening`` line is an info line, and the benchmark logs at warning).
HAProxy and redis-server cannot bind 0: they get a port that was free a moment ago, and are
started again on another one if they could not bind it. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from fleet import NODE_TOKEN, PY, SECRET, Procs, free_port, gateway_argv, haproxy_conf, sim_node_argv, wait_for

#: A pass-through with no storage and no queue: reads the multipart ``file``, posts it to the
#: node with the fewest requests outstanding (ties: round robin) over one pooled session, and
#: answers the node's answer. argv: node URLs (comma-separated), node token.
BARE_APP = '''
import itertools, sys
import aiohttp
from aiohttp import web

NODES = sys.argv[1].split(",")
HEADERS = {"Authorization": "Bearer " + sys.argv[2], "Content-Type": "image/jpeg"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
outstanding = [0] * len(NODES)
turn = itertools.count()


async def session_ctx(app):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        app[SESSION] = session
        yield


async def enhance(request):
    data = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if part.name == "file":
            data = await part.read()
        else:
            await part.release()
    if data is None:
        return web.json_response({"error": "send the photo as the multipart field file"}, status=400)
    start = next(turn)
    n = len(NODES)
    i = min(range(n), key=lambda k: (outstanding[k], (k - start) % n))
    outstanding[i] += 1
    try:
        async with request.app[SESSION].post(NODES[i] + "/v1/enhance", data=data, headers=HEADERS) as r:
            body = await r.read()
            return web.Response(body=body, status=r.status, content_type=r.content_type)
    finally:
        outstanding[i] -= 1


app = web.Application(client_max_size=64 * 2**20)
app.cleanup_ctx.append(session_ctx)
app.router.add_post("/api/v1/enhance", enhance)
try:
    import uvloop
    loop = uvloop.new_event_loop()
except ImportError:
    loop = None
web.run_app(app, host="127.0.0.1", port=0, print=None, access_log=None, loop=loop)
'''


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def log_tail(procs: Procs, name: str) -> str:
    path = procs.workdir / f"{name}.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


async def bound_port(procs: Procs, name: str, pid: int, timeout: float = 60.0) -> int:
    """The one port the child ``name`` bound, once it listens; raises with its log if it exits."""
    proc = next(p for p in procs.procs if p.pid == pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log_tail(procs, name)}")
        ports = listening_ports(pid)
        if len(ports) == 1:
            return ports.pop()
        if len(ports) > 1:
            raise RuntimeError(f"{name} listens on several ports: {sorted(ports)}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{name} did not listen within {timeout:.0f} s:\n{log_tail(procs, name)}")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (the gateway's image-check process among them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far; gone ones count 0."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Setup:
    """One system under test: where its clients send, and which processes do the work."""

    name: str
    urls: list[str]
    front: list[int] = field(default_factory=list)  # gateway / proxy / redis pids (trees)
    nodes: list[int] = field(default_factory=list)


class Launcher:
    """Starts the processes of every setup into one :class:`Procs` (stopped by the caller)."""

    def __init__(self, procs: Procs, http: aiohttp.ClientSession, log_level: str) -> None:
        self.procs, self.http, self.log_level = procs, http, log_level
        self.count = 0

    def _name(self, what: str) -> str:
        self.count += 1
        return f"{self.count:02d}-{what}"

    async def _get_ok(self, url: str) -> bool:
        async with self.http.get(url) as r:
            return r.status == 200

    async def gateways(self, label: str, n: int, storage: str = "") -> tuple[list[str], list[int]]:
        """``n`` photogate processes sharing one config (``storage`` YAML line) and data dir."""
        work = self.procs.workdir / label
        work.mkdir()
        config = work / "gateway.yaml"
        config.write_text(f"webhook: {{secret: {SECRET}, allowed_node_networks: [127.0.0.0/8]}}\n"
                          f"logging: {{level: {self.log_level}}}\nrate_limit: {{enabled: false}}\n{storage}")
        urls, pids = [], []
        for i in range(n):
            name = self._name(f"{label}-gateway{i}")
            proc = self.procs.start(name, gateway_argv(config, 0, work / "data"))
            url = f"http://127.0.0.1:{await bound_port(self.procs, name, proc.pid)}"
            await wait_for(lambda url=url: self._get_ok(url + "/api/v1/health"), f"{name} to answer")
            urls.append(url)
            pids.append(proc.pid)
        return urls, pids

    async def nodes(self, label: str, n: int, speed: float, slots: int,
                    gateway: str | None) -> tuple[list[int], list[int]]:
        """``n`` simulated nodes (registered with ``gateway``, else standalone with NODE_TOKEN)."""
        ports, pids = [], []
        for i in range(n):
            name = self._name(f"{label}-node{i}")
            argv = sim_node_argv(0, speed, slots, gateway=gateway, state_dir=self.procs.workdir / name)
            proc = self.procs.start(name, argv + ["--log-level", self.log_level])
            ports.append(await bound_port(self.procs, name, proc.pid))
            pids.append(proc.pid)
        for port in ports:
            await wait_for(lambda port=port: self._get_ok(f"http://127.0.0.1:{port}/health"), f"node on {port}")
        return ports, pids

    async def registered(self, urls: list[str], n: int) -> None:
        async def check() -> bool:
            for url in urls:
                async with self.http.get(url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as r:
                    if (await r.json())["data"]["healthy_servers"] != n:
                        return False
            return True

        await wait_for(check, f"{n} nodes to register with {', '.join(urls)}")

    async def photogate(self, label: str, gateways: int, nodes: int, speed: float, slots: int,
                        storage: str = "") -> Setup:
        urls, gw_pids = await self.gateways(label, gateways, storage)
        _, node_pids = await self.nodes(label, nodes, speed, slots, gateway=urls[0])
        await self.registered(urls, nodes)
        return Setup(label, urls, gw_pids, node_pids)

    async def bare(self, node_ports: list[int]) -> tuple[str, int]:
        name = self._name("bare")
        nodes = ",".join(f"http://127.0.0.1:{p}" for p in node_ports)
        proc = self.procs.start(name, [PY, "-c", BARE_APP, nodes, NODE_TOKEN])
        return f"http://127.0.0.1:{await bound_port(self.procs, name, proc.pid)}", proc.pid

    async def haproxy(self, binary: str, node_ports: list[int]) -> tuple[str, int]:
        """HAProxy ``leastconn`` (no maxconn) over the nodes; a new port if it could not bind one."""
        for _ in range(3):
            name, port = self._name("haproxy"), free_port()
            (self.procs.workdir / name).mkdir()
            conf = haproxy_conf(self.procs.workdir / name, port, node_ports, None)
            proc = self.procs.start(name, [binary, "-db", "-f", str(conf)])
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if port in listening_ports(proc.pid):
                    return url, proc.pid
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        raise RuntimeError(f"haproxy did not start:\n{log_tail(self.procs, name)}")

    async def redis(self, binary: str) -> tuple[str, int]:
        """redis-server, no persistence (as bench/multigateway.py); a new port if one was taken."""
        for _ in range(3):
            name, port = self._name("redis"), free_port()
            proc = self.procs.start(name, [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                           str(self.procs.workdir), "--save", "", "--appendonly", "no"])
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if port in listening_ports(proc.pid):
                    return f"redis://127.0.0.1:{port}/0", proc.pid
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        raise RuntimeError(f"redis-server did not start:\n{log_tail(self.procs, name)}")
