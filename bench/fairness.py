#!/usr/bin/env python3
"""Fair share benchmark (issue 18): a heavy owner's batch and light owners on one simulated fleet.

One heavy owner submits ``--heavy`` photos at t=0; ``--light-owners`` light owners submit
``--light-photos`` each at t=1 s. Owners are client addresses (``X-Forwarded-For`` through a
trusted proxy: the open API's owner is ``ip:<address>``), or API keys for the classes run.
Each photo's completion time is from its own submission to its task's ``finished_at`` (read
through the admin API once every task is done: no polling in the measurement). Runs, on one gateway (SQLite) and on
two gateway processes sharing one Redis (heavy through the first, light owners alternating):

- alone:   only the light owners, on the same fleet (the yardstick);
- fifo:    ``access.fair_share: false`` (first come, first served: the behaviour before issue 18);
- fair:    fair share on, every owner in the default class;
- classes: fair share on, classes paid:4 / free:1, half the light owners paid (API keys made
  through ``POST /api/v1/admin/keys``; skipped where the gateway has no such endpoint).

Printed: the light owners' p95 completion time (target: fair <= 2x alone), paid vs free median
wait, and the heavy owner's share of the megapixels completed from the light owners' arrival
until the last of them is done, against its fair share over the same photos (at each
completion, its weight over the weights of the owners still waiting).

    python bench/fairness.py                           # the issue's figures (about 3 minutes)
    python bench/fairness.py --heavy 40 --light-photos 2 --setups sqlite   # smoke run

Loopback only; every wait is bounded; every process started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import GATEWAY_CONFIG, SECRET, Procs, ensure_binary, free_port, gateway_argv, jpeg, sim_node_argv, wait_for

ADMIN_TOKEN = "bench-admin-token-0123456789"
RUNS = ("alone", "fifo", "fair", "classes")
WEIGHTS = {"paid": 4, "free": 1}
#: Uploads in flight at once (the heavy owner's 200 go in a burst of this width).
UPLOADS = 32


@dataclass
class Done:
    owner: str
    cls: str
    submitted: float  # seconds since the run began
    finished: float
    megapixels: float


@dataclass
class Outcome:
    run: str
    setup: str
    done: list[Done] = field(default_factory=list)
    failed: int = 0
    note: str = ""
    #: Why photos failed (HTTP status or task error -> how many).
    why: dict[str, int] = field(default_factory=dict)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Fleet:
    """Gateways (one on SQLite, or ``gateways`` on one Redis) and simulated nodes, for one run."""

    def __init__(self, work: Path, args: argparse.Namespace, setup: str, fair: bool) -> None:
        self.work, self.args, self.setup, self.fair = work, args, setup, fair
        self.procs = Procs(work)
        self.urls: list[str] = []
        self.redis: subprocess.Popen[bytes] | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        storage = ""
        if self.setup == "redis":
            binary = ensure_binary("redis-server", "redis-server")
            if binary is None:
                raise RuntimeError("redis-server is not installed")
            port = free_port()
            self.redis = self.procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                                    "--appendonly", "no", "--dir", str(self.work)])
            storage = f"storage: {{backend: redis, redis_url: 'redis://127.0.0.1:{port}/0', redis_prefix: 'fb:'}}\n"
        config = self.work / "gateway.yaml"
        config.write_text(
            GATEWAY_CONFIG + storage
            + f"admin: {{token: {ADMIN_TOKEN}}}\nserver: {{trusted_proxies: [127.0.0.1]}}\n"
            + "rate_limit: {enabled: false}\nlimits: {max_queue: 5000}\n"
            + f"access: {{fair_share: {'true' if self.fair else 'false'}, classes: {{paid: 4, free: 1}}}}\n")
        ports = [free_port() for _ in range(2 if self.setup == "redis" else 1)]
        for i, port in enumerate(ports):
            self.procs.start(f"photogate{i}", gateway_argv(config, port, self.work / "data"))
            self.urls.append(f"http://127.0.0.1:{port}")
        for url in self.urls:
            await wait_for(lambda url=url: _ok(http, url + "/api/v1/health"), f"photogate at {url}", 60)
        for i in range(self.args.nodes):
            self.procs.start(f"node{i}", sim_node_argv(free_port(), self.args.speed, 1, gateway=self.urls[0],
                                                       state_dir=self.work / f"node{i}"))

        async def registered() -> bool:
            for url in self.urls:
                async with http.get(url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as r:
                    if (await r.json())["data"]["healthy_servers"] != self.args.nodes:
                        return False
            return True

        await wait_for(registered, "the nodes to register", 60)

    def stop(self) -> None:
        self.procs.stop()


async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url) as r:
        return r.status == 200


async def make_key(http: aiohttp.ClientSession, url: str, name: str, cls: str) -> str | None:
    """An API key of class ``cls``; None when the gateway has no key admin API."""
    async with http.post(url + "/api/v1/admin/keys", json={"name": name, "class": cls},
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        if r.status == 404:
            return None
        body = await r.json()
        if r.status != 201:
            raise RuntimeError(f"creating an API key: HTTP {r.status} {body}")
        return str(body["key"])


async def submit(http: aiohttp.ClientSession, url: str, photo: bytes, headers: dict[str, str]) -> str:
    """Upload; the task id (raises with the answer when the upload is refused)."""
    form = aiohttp.FormData()
    form.add_field("file", photo, filename="p.jpg", content_type="image/jpeg")
    async with http.post(f"{url}/api/v1/enhance", data=form, headers=headers) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {body.get('error')}")
        return str(body["task_id"])


async def finished(http: aiohttp.ClientSession, url: str, total: int, timeout: float) -> None:
    """Wait (bounded) until ``total`` tasks are completed or failed: one count a poll."""
    async def all_done() -> bool:
        async with http.get(url + "/api/v1/health") as r:
            tasks = (await r.json())["tasks"]
            return int(tasks.get("completed", 0)) + int(tasks.get("failed", 0)) >= total

    await wait_for(all_done, f"{total} tasks to finish", timeout)


async def detail(http: aiohttp.ClientSession, url: str, task_id: str) -> dict[str, object]:
    async with http.get(f"{url}/api/v1/admin/tasks/{task_id}",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        return dict((await r.json())["task"])


async def one_run(run: str, setup: str, args: argparse.Namespace, work: Path) -> Outcome:
    out = Outcome(run, setup)
    fleet = Fleet(work / f"{setup}-{run}", args, setup, fair=run != "fifo")
    (work / f"{setup}-{run}").mkdir()
    photo = jpeg(args.width, args.height)
    mp = args.width * args.height / 1e6
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=args.timeout + 30)) as http:
        try:
            await fleet.start(http)
            owners: list[tuple[str, str, dict[str, str], float, int, str]] = []  # name, class, headers, t, n, url
            lights = [(f"light{i}", "paid" if run == "classes" and i % 2 == 0 else "free")
                      for i in range(args.light_owners)]
            everyone = ([] if run == "alone" else [("heavy", "free")]) + lights
            for n, (name, cls) in enumerate(everyone):
                headers = {"X-Forwarded-For": f"10.0.{n // 250}.{n % 250 + 1}"}
                if run == "classes":
                    key = await make_key(http, fleet.urls[0], name, cls)
                    if key is None:
                        out.note = "no /api/v1/admin/keys on this gateway (the API-key part of issue 18)"
                        return out
                    headers = {"Authorization": f"Bearer {key}"}
                heavy = name == "heavy"
                url = fleet.urls[0] if heavy else fleet.urls[n % len(fleet.urls)]
                owners.append((name, cls, headers, 0.0 if heavy else 1.0, args.heavy if heavy else args.light_photos,
                               url))
            t0 = time.time()  # the gateways' clock: finished_at is wall time on this machine
            sent: list[tuple[str, str, str, float]] = []  # task id, owner, class, submitted
            # At most UPLOADS at once: a gateway's Redis pool holds 100 connections (redis-py's
            # default), and 200 uploads at once run it out (503 MaxConnectionsError).
            uploads = asyncio.Semaphore(UPLOADS)

            async def photo_of(name: str, cls: str, headers: dict[str, str], at: float, url: str) -> None:
                await asyncio.sleep(max(at - (time.time() - t0), 0.0))
                try:
                    async with uploads:
                        submitted = time.time() - t0
                        sent.append((await submit(http, url, photo, headers), name, cls, submitted))
                except RuntimeError as exc:
                    out.failed += 1
                    out.why[str(exc)[:120]] = out.why.get(str(exc)[:120], 0) + 1

            await asyncio.gather(*(photo_of(name, cls, headers, at, url)
                                   for name, cls, headers, at, n, url in owners for _ in range(n)))
            await finished(http, fleet.urls[0], len(sent), args.timeout)
            gate = asyncio.Semaphore(16)

            async def record(task_id: str, name: str, cls: str, submitted: float) -> None:
                async with gate:
                    task = await detail(http, fleet.urls[0], task_id)
                if task["status"] == "completed" and isinstance(task["finished_at"], (int, float)):
                    out.done.append(Done(name, cls, submitted, float(task["finished_at"]) - t0, mp))
                else:
                    out.failed += 1
                    why = f"task {task['status']}: {task.get('last_error')}"[:120]
                    out.why[why] = out.why.get(why, 0) + 1

            await asyncio.gather(*(record(*row) for row in sent))
        finally:
            fleet.stop()
    return out


def summary(out: Outcome, alone_p95: float | None) -> dict[str, str]:
    light = [d for d in out.done if d.owner != "heavy"]
    waits = [d.finished - d.submitted for d in light]
    row = {"setup": out.setup, "run": out.run, "light p95 s": f"{pct(waits, 95):.2f}",
           "x alone": f"{pct(waits, 95) / alone_p95:.2f}" if alone_p95 else "-",
           "paid median s": "-", "free median s": "-", "heavy share": "-", "fair share": "-", "failed": str(out.failed)}
    if out.run == "classes":
        for cls in ("paid", "free"):
            waited = [d.finished - d.submitted for d in light if d.cls == cls]
            row[f"{cls} median s"] = f"{statistics.median(waited):.2f}" if waited else "-"
    heavy = [d for d in out.done if d.owner == "heavy"]
    if heavy and light:
        share, fair = heavy_share(out.done, out.run == "classes")
        row["heavy share"] = f"{share:.3f}"
        row["fair share"] = f"{fair:.3f}"
    return row


def heavy_share(done: list[Done], classes: bool) -> tuple[float, float]:
    """The heavy owner's share of the megapixels completed from the light owners' arrival until
    the last of them is done, and its fair share over the same photos: at each completion, its
    weight over the weights of the owners still waiting then (each photo weighted by its
    megapixels)."""
    start = min(d.submitted for d in done if d.owner != "heavy")
    end = max(d.finished for d in done if d.owner != "heavy")
    window = sorted((d for d in done if start <= d.finished <= end), key=lambda d: d.finished)
    last = {d.owner: max(x.finished for x in done if x.owner == d.owner) for d in done}
    first = {d.owner: min(x.submitted for x in done if x.owner == d.owner) for d in done}
    cls = {d.owner: d.cls for d in done}
    weight = {o: (WEIGHTS[c] if classes else 1) for o, c in cls.items()}
    total = heavy = expected = 0.0
    for d in window:
        waiting = [o for o in last if first[o] <= d.finished <= last[o]]
        total += d.megapixels
        heavy += d.megapixels if d.owner == "heavy" else 0.0
        if "heavy" in waiting:
            expected += d.megapixels * weight["heavy"] / sum(weight[o] for o in waiting)
    return heavy / total, expected / total


def _owners(light: list[Done]) -> list[Done]:
    seen: dict[str, Done] = {}
    for d in light:
        seen.setdefault(d.owner, d)
    return list(seen.values())


def table(rows: list[dict[str, str]]) -> str:
    cols = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(r[c].ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    rows: list[dict[str, str]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="photogate-fairness-") as tmp:
        for setup in args.setups.split(","):
            alone_p95: float | None = None
            for run in RUNS:
                out = await one_run(run, setup, args, Path(tmp))
                if out.note:
                    notes.append(f"{setup} {run}: skipped: {out.note}")
                    continue
                if run == "alone":
                    alone_p95 = pct([d.finished - d.submitted for d in out.done], 95)
                rows.append(summary(out, alone_p95))
                print(f"  {setup:6} {run:8} done ({len(out.done)} photos, {out.failed} failed)", file=sys.stderr)
                notes += [f"{setup} {run}: {n} x {why}" for why, n in out.why.items()]
    print(f"fleet: {args.nodes} simulated nodes x 1 slot at {args.speed} MP/s; photos {args.width}x{args.height}; "
          f"heavy {args.heavy} at t=0, {args.light_owners} light owners x {args.light_photos} at t=1 s")
    print(table(rows))
    for note in notes:
        print(note)
    return 0 if rows and all(r["failed"] == "0" for r in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heavy", type=int, default=200, help="photos of the heavy owner, at t=0")
    parser.add_argument("--light-owners", type=int, default=10)
    parser.add_argument("--light-photos", type=int, default=5, help="photos of each light owner, at t=1 s")
    parser.add_argument("--nodes", type=int, default=2, help="simulated nodes, one slot each")
    parser.add_argument("--speed", type=float, default=8.0, help="MP/s of each node")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--setups", default="sqlite,redis", help="sqlite (one gateway), redis (two gateways)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds a photo may take, at most")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
