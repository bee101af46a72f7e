"""Soak: thousands of photos through photogate while something breaks every few seconds.

Starts a real gateway process, ``--sim-nodes`` simulated GPU nodes (``gpunode --simulate``,
registering themselves) and ``--fault-nodes`` misbehaving nodes (tests/faults/faults_node.py),
submits ``--jobs`` photos, each one unique (its colour encodes its number), and injects one
random fault every ``--fault-every`` seconds on average:

- ``node_kill``: SIGKILL a simulated node mid-inference, restart it 1.5 s later;
- ``node_hang``: SIGSTOP a simulated node for 3 s (accepts connections, answers nothing);
- ``node_500``: a fault node answers 500 for 3 s;
- ``corrupt_result``: a fault node answers a truncated or junk image for 3 s;
- ``flap``: a fault node goes up and down every 0.4 s for 3 s;
- ``gateway_kill``: SIGKILL the gateway, restart it on the same data dir (at most every 20 s,
  at least once a run).

Every node answers its photo flipped left to right (``--sim-output mirror``, and the fault
nodes' ``--output mirror``), and every photo is asymmetric, so the client knows each task's
result. At the end every accepted task must be ``completed`` or ``failed`` with a reason; a
task answered 404 or still queued/processing is *lost*; a completed task whose download is not
its own photo mirrored (pixel for pixel; PNG is lossless) is *wrong-content* — a gateway that
served the input, or another task's result, back fails here. A failed task is *explained* when
it used all its attempts and its last error is what an injected fault produces (the table says
which); any other failure is *unexplained*. Lost, wrong-content and unexplained failures must
all be 0; the exit status is 1 otherwise. Loopback only; every wait is bounded by ``--deadline``.

    python bench/soak.py --jobs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import PY, SECRET, free_port, gateway_argv, wait_for

REPO = Path(__file__).resolve().parent.parent
FAULTS_NODE = REPO / "tests" / "faults" / "faults_node.py"
ADMIN = "soak-admin-token-0123456789"
MAX_ATTEMPTS = 4
GATEWAY_CONFIG = f"""
webhook: {{allowed_node_networks: [127.0.0.0/8]}}  # the nodes run on this machine
health_check: {{interval: 0.5, timeout: 1, failure_threshold: 2}}
dispatch: {{timeout: 2, connect_timeout: 1, max_attempts: {MAX_ATTEMPTS}, retry_backoff: 0.3}}
limits: {{max_queue: 10000}}
logging: {{level: warning}}
"""
#: The fault that produces each failure reason (see :func:`reason`): a task that failed for
#: one of these after all its attempts failed correctly; for anything else, it did not.
FAULT_OF_REASON = {
    "node timed out": ("node_hang",),
    "node error 500": ("node_500", "flap"),
    "corrupt result": ("corrupt_result",),
    "node unreachable": ("node_kill", "flap"),
    "node refused its token (restarting)": ("node_kill",),
}


def photo(i: int) -> bytes:
    """48 x 32 px: its colour encodes ``i``, a black or white stripe marks its left edge (so its mirror
    image differs from it in every row)."""
    img = Image.new("RGB", (48, 32), (i & 255, (i >> 8) & 255, 64 + ((i >> 16) & 127)))
    img.paste((0, 0, 0) if (i & 255) > 127 else (255, 255, 255), (0, 0, 6, 32))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def pixels_digest(data: bytes, *, mirrored: bool = False) -> str | None:
    """sha256 of the RGB pixels of ``data`` (mirrored left to right if asked); None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError):
        return None
    return hashlib.sha256((ImageOps.mirror(rgb) if mirrored else rgb).tobytes()).hexdigest()


def reason(error: str | None) -> str:
    """A failed task's error, reduced to its kind."""
    text = (error or "").lower()
    for key, name in (("timed out", "node timed out"), ("http 500", "node error 500"),
                      ("unreadable image", "corrupt result"), ("not an image", "corrupt result"),
                      ("could not store", "gateway storage"), ("cannot reach", "node unreachable"),
                      ("could not process", "rejected by node"),
                      ("credential", "node refused its token (restarting)")):
        if key in text:
            return name
    return re.sub(r"[0-9a-f]{32}", "<id>", text)[:60] or "no reason given"


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self.faults: Counter[str] = Counter()
        self.sent: dict[str, str] = {}  # task id -> sha256 of its photo's pixels, mirrored: its result
        self.echo: dict[str, str] = {}  # task id -> sha256 of its photo's own pixels
        self.submit_errors: Counter[str] = Counter()
        self.stop_faults = asyncio.Event()
        self.gateway_restarts = 0
        self.last_gateway_kill = 0.0
        self.started = time.monotonic()

    # -- processes -------------------------------------------------------------------------

    def start(self, name: str, argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        argv = argv or self.argv[name]
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, **(env or {})})
        self.argv[name] = argv

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def start_gateway(self) -> None:
        self.start("gateway", gateway_argv(self.workdir / "gateway.yaml", self.port, self.workdir / "gwdata"),
                   env={"WEBHOOK_SECRET": SECRET, "PHOTOGATE_ADMIN_TOKEN": ADMIN})

    async def gateway_up(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(self.url + "/api/v1/health") as resp:
            return resp.status == 200

    async def setup(self, session: aiohttp.ClientSession) -> None:
        (self.workdir / "gateway.yaml").write_text(GATEWAY_CONFIG)
        self.start_gateway()
        await wait_for(lambda: self.gateway_up(session), "the gateway", 30)
        # 48x32 px = 0.0015 MP at 0.0075 MP/s: 0.2 s a photo, 2 slots a node.
        for i in range(self.args.sim_nodes):
            port = free_port()
            self.start(f"sim{i}", [PY, "-m", "gpunode", "--simulate", "--speed", "0.0075", "--slots", "2",
                                   "--jitter", "0.3", "--host", "127.0.0.1", "--advertise-ip", "127.0.0.1",
                                   "--port", str(port), "--state-dir", str(self.workdir / f"sim{i}"),
                                   "--gateway", self.url, "--secret", SECRET, "--queue-size", "16",
                                   "--register-backoff-max", "1", "--log-level", "warning",
                                   "--sim-output", "mirror"])
        self.fault_ports = []
        for i in range(self.args.fault_nodes):
            port = free_port()
            self.fault_ports.append(port)
            self.start(f"faulty{i}", [PY, str(FAULTS_NODE), "--port", str(port), "--delay", "0.2",
                                      "--output", "mirror"])
        for port in self.fault_ports:
            await wait_for(lambda p=port: self._answers(session, f"http://127.0.0.1:{p}/_stats"), "a fault node", 20)
            async with session.post(self.url + "/webhook/register",
                                    json={"ip": "127.0.0.1", "port": port, "secret": SECRET, "slots": 2}) as resp:
                assert resp.status == 200, await resp.text()
        want = self.args.sim_nodes + self.args.fault_nodes
        await wait_for(lambda: self._healthy(session, want), f"{want} healthy nodes", 60)

    async def _answers(self, session: aiohttp.ClientSession, url: str) -> bool:
        async with session.get(url) as resp:
            return resp.status == 200

    async def _healthy(self, session: aiohttp.ClientSession, count: int) -> bool:
        async with session.get(self.url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as resp:
            data = (await resp.json())["data"]
            return int(data["healthy_servers"]) >= count

    # -- faults ----------------------------------------------------------------------------

    async def _control(self, session: aiohttp.ClientSession, port: int, **settings: Any) -> None:
        try:
            async with session.post(f"http://127.0.0.1:{port}/_control", json=settings) as resp:
                await resp.read()
        except (aiohttp.ClientError, OSError):
            pass

    async def inject(self, session: aiohttp.ClientSession) -> None:
        kinds = ["node_kill", "node_hang", "node_500", "corrupt_result", "flap", "gateway_kill"]
        pending: list[asyncio.Task[None]] = []
        busy: set[str] = set()  # one fault at a time per node
        while not self.stop_faults.is_set():
            try:
                await asyncio.wait_for(self.stop_faults.wait(), self.rng.uniform(0.5, 1.5) * self.args.fault_every)
                break
            except asyncio.TimeoutError:  # noqa: UP041 - not TimeoutError on 3.10
                pass
            kind = self.rng.choice(kinds)
            since = time.monotonic() - self.last_gateway_kill
            if kind == "gateway_kill" and since < 20:
                kind = "node_kill"
            elif not self.faults["gateway_kill"] and time.monotonic() - self.started > 8:
                kind = "gateway_kill"  # every run has at least one
            self.faults[kind] += 1
            if kind == "gateway_kill":
                self.last_gateway_kill = time.monotonic()
                self.kill("gateway")
                self.start_gateway()
                self.gateway_restarts += 1
                continue
            if kind in ("node_kill", "node_hang"):
                target = f"sim{self.rng.randrange(self.args.sim_nodes)}"
            else:
                target = f"faulty{self.rng.randrange(self.args.fault_nodes)}"
            if target in busy:
                self.faults[kind] -= 1
                continue
            busy.add(target)
            if kind in ("node_kill", "node_hang"):
                fault = self._node_fault(target, kind)
            else:
                port = self.fault_ports[int(target.removeprefix("faulty"))]
                mode = {"node_500": "error500", "flap": "flap"}.get(kind) or self.rng.choice(["garbage", "truncated"])
                fault = self._mode_fault(session, port, mode)
            task = asyncio.create_task(fault)
            task.add_done_callback(lambda _t, name=target: busy.discard(name))
            pending.append(task)
        await asyncio.gather(*pending)

    async def _node_fault(self, name: str, kind: str) -> None:
        if kind == "node_kill":
            self.kill(name)
            await asyncio.sleep(1.5)
            self.start(name)
        else:
            proc = self.procs[name]
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGSTOP)
                await asyncio.sleep(3)
                os.kill(proc.pid, signal.SIGCONT)

    async def _mode_fault(self, session: aiohttp.ClientSession, port: int, mode: str) -> None:
        await self._control(session, port, mode=mode, period=0.4)
        await asyncio.sleep(3)
        await self._control(session, port, mode="ok")

    # -- clients ---------------------------------------------------------------------------

    async def submit_one(self, session: aiohttp.ClientSession, i: int, deadline: float) -> None:
        data = photo(i)
        while time.monotonic() < deadline:
            form = aiohttp.FormData()
            form.add_field("file", data, filename=f"{i}.png", content_type="image/png")
            try:
                async with session.post(self.url + "/api/v1/enhance", data=form) as resp:
                    if resp.status == 200:
                        task_id = (await resp.json())["task_id"]
                        self.sent[task_id] = str(pixels_digest(data, mirrored=True))
                        self.echo[task_id] = str(pixels_digest(data))
                        return
                    self.submit_errors[f"HTTP {resp.status}"] += 1
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:  # noqa: UP041
                self.submit_errors[type(exc).__name__] += 1
            await asyncio.sleep(0.2)
        self.submit_errors["gave up"] += 1

    async def unfinished(self, session: aiohttp.ClientSession) -> int | None:
        count = 0
        try:
            for status in ("queued", "processing"):
                async with session.get(f"{self.url}/api/v1/admin/tasks?status={status}&limit=10000",
                                       headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
                    if resp.status != 200:
                        return None
                    count += len((await resp.json())["tasks"])
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):  # noqa: UP041
            return None
        return count

    async def check(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        finals: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        unexplained: list[str] = []
        retried: list[str] = []
        lost: list[str] = []
        wrong: list[str] = []
        echoed: list[str] = []
        sem = asyncio.Semaphore(32)

        async def one(task_id: str, digest: str) -> None:
            async with sem:
                async with session.get(f"{self.url}/api/v1/status/{task_id}") as resp:
                    if resp.status != 200:
                        lost.append(task_id)
                        return
                    body = await resp.json()
                finals[body["status"]] += 1
                if body["status"] == "completed" and body["attempts"] > 1:
                    retried.append(task_id)
                if body["status"] == "failed":
                    why = reason(body["error"])
                    failed[why] += 1
                    faults = [f for f in FAULT_OF_REASON.get(why, ()) if self.faults[f]]
                    if not faults or body["attempts"] < MAX_ATTEMPTS:
                        unexplained.append(f"{task_id} ({body['attempts']} attempts): {body['error']}")
                elif body["status"] == "completed":
                    async with session.get(f"{self.url}/api/v1/download/{task_id}") as resp:
                        got = await resp.read()
                    if resp.status != 200 or pixels_digest(got) != digest:
                        wrong.append(task_id)
                        if pixels_digest(got) == self.echo[task_id]:
                            echoed.append(task_id)
                else:
                    lost.append(task_id)

        await asyncio.gather(*(one(t, d) for t, d in self.sent.items()))
        orphans = 0
        async with session.get(f"{self.url}/api/v1/admin/tasks?limit=10000",
                               headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            orphans = len({t["task_id"] for t in (await resp.json())["tasks"]} - set(self.sent))
        return {"finals": finals, "failed": failed, "lost": lost, "wrong": wrong, "retried": retried,
                "orphans": orphans, "unexplained": unexplained, "echoed": echoed}

    async def run(self) -> dict[str, Any]:
        args = self.args
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await self.setup(session)
            started = self.started = time.monotonic()
            deadline = started + args.deadline
            injector = asyncio.create_task(self.inject(session))
            sem = asyncio.Semaphore(args.concurrency)

            async def submit(i: int) -> None:
                async with sem:
                    await self.submit_one(session, i, deadline)

            await asyncio.gather(*(submit(i) for i in range(args.jobs)))
            submitted = time.monotonic() - started
            while time.monotonic() < deadline:
                left = await self.unfinished(session)
                if left == 0:
                    break
                await asyncio.sleep(0.5)
            self.stop_faults.set()
            await injector
            # After the last fault: the gateway must be up, and nothing may be left running.
            await wait_for(lambda: self.gateway_up(session), "the gateway after the last fault", 30)
            settle = time.monotonic() + 30
            while time.monotonic() < settle and await self.unfinished(session) != 0:
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
            result = await self.check(session)
        result.update(elapsed=elapsed, submitted_in=submitted)
        return result


def table(soak: Soak, result: dict[str, Any], args: argparse.Namespace) -> str:
    finals, failed = result["finals"], result["failed"]
    rows = [
        ("jobs offered", args.jobs),
        ("accepted (HTTP 200)", len(soak.sent)),
        ("completed", finals.get("completed", 0)),
        ("  of which after more than one attempt", len(result["retried"])),
        ("failed", finals.get("failed", 0)),
        *((f"  failed: {k} (fault: {' or '.join(FAULT_OF_REASON.get(k, ('none',)))})", v)
          for k, v in sorted(failed.items())),
        ("failed, unexplained by the faults", len(result["unexplained"])),
        ("lost (404, or queued/processing at the end)", len(result["lost"])),
        ("wrong content (not the photo mirrored)", len(result["wrong"])),
        ("  of which the input served back", len(result["echoed"])),
        ("faults injected", sum(soak.faults.values())),
        *((f"  fault: {k}", v) for k, v in sorted(soak.faults.items())),
        ("upload retries (gateway down or busy)", sum(soak.submit_errors.values())),
        *((f"  retry: {k}", v) for k, v in sorted(soak.submit_errors.items())),
        ("tasks stored whose answer a gateway kill cut off", result["orphans"]),
        ("wall time, s", f"{result['elapsed']:.1f}"),
    ]
    width = max(len(str(k)) for k, _ in rows)
    lines = [f"| {'figure'.ljust(width)} | value |", f"| {'-' * width} | ----- |"]
    lines += [f"| {str(k).ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--sim-nodes", type=int, default=4)
    parser.add_argument("--fault-nodes", type=int, default=2)
    parser.add_argument("--fault-every", type=float, default=2.0, help="mean seconds between faults")
    parser.add_argument("--concurrency", type=int, default=24, help="uploads in flight")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="photogate-soak-") as tmp:
        soak = Soak(args, Path(tmp))
        try:
            result = asyncio.run(soak.run())
        finally:
            soak.stop_all()
    print(table(soak, result, args))
    if args.json:
        args.json.write_text(json.dumps({
            "accepted": len(soak.sent), "finals": dict(result["finals"]), "failed": dict(result["failed"]),
            "lost": len(result["lost"]), "wrong": len(result["wrong"]), "echoed": len(result["echoed"]),
            "unexplained": result["unexplained"], "faults": dict(soak.faults),
            "elapsed": result["elapsed"],
        }, indent=2))
    ok = not result["lost"] and not result["wrong"] and not result["unexplained"] and len(soak.sent) == args.jobs
    if not ok:
        print(f"FAIL: lost {result['lost'][:5]}, wrong content {result['wrong'][:5]}, "
              f"unexplained failures {result['unexplained'][:5]}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
