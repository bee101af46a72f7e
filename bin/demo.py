#!/usr/bin/env python3
"""Run the stack locally and enhance one photo end to end (what ``bin/quickstart`` runs).

Starts ``photogate --dev`` and one ``gpunode`` with the bundled model on 127.0.0.1, waits
until the node has registered and is healthy, uploads a photo, waits for the result and
saves it under ``out/``. Then keeps both running until Ctrl-C, unless ``--once``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
SECRET = "gpu-server-register-to-api-gateway-2024"  # --dev only: the seed's well-known secret


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SystemExit("no free port")


async def wait_for(check, what: str, timeout: float, procs: list[subprocess.Popen]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args[0]} exited with {proc.returncode} while waiting for {what}; see the logs")
        try:
            if await check():
                return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


async def run(args: argparse.Namespace) -> int:
    data = REPO / "data" / "demo"
    data.mkdir(parents=True, exist_ok=True)
    out = REPO / "out"
    out.mkdir(exist_ok=True)
    gw_port, node_port = free_port(args.port), free_port(args.node_port)
    gateway = f"http://127.0.0.1:{gw_port}"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PHOTOGATE_ADMIN_TOKEN": os.environ.get("PHOTOGATE_ADMIN_TOKEN", "demo-admin-token")}
    logs = {name: (data / f"{name}.log").open("ab") for name in ("photogate", "gpunode")}
    # Each child in a session of its own: Ctrl-C signals the terminal's whole process group,
    # and a gateway stopping at the same moment as its node left the node unable to
    # unregister. Only this script gets it, and stops them in order (the finally below).
    procs = [
        subprocess.Popen([str(bindir / "photogate"), "--dev", "--config", str(REPO / "config.yaml"),
                          "--port", str(gw_port), "--data-dir", str(data / "gateway")],
                         stdout=logs["photogate"], stderr=subprocess.STDOUT, env=env, start_new_session=True),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            async def gateway_up() -> bool:
                async with http.get(gateway + "/api/v1/health") as resp:
                    return resp.status == 200

            await wait_for(gateway_up, "the gateway", 60, procs)
            print(f"photogate  {gateway}  (log: {data / 'photogate.log'})")
            procs.append(subprocess.Popen(
                [str(bindir / "gpunode"), "--gateway", gateway, "--secret", SECRET, "--port", str(node_port),
                 "--host", "127.0.0.1", "--advertise-ip", "127.0.0.1", "--state-dir", str(data / "node")],
                stdout=logs["gpunode"], stderr=subprocess.STDOUT, env=env, start_new_session=True))

            async def node_healthy() -> bool:
                async with http.get(gateway + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as resp:
                    servers = (await resp.json())["data"]["servers"]
                    return any(s["healthy"] and s["port"] == node_port for s in servers)

            await wait_for(node_healthy, "the gpunode to register", 120, procs)
            print(f"gpunode    http://127.0.0.1:{node_port}  (log: {data / 'gpunode.log'})")

            photo = Path(args.photo)
            form = aiohttp.FormData()
            form.add_field("file", photo.read_bytes(), filename=photo.name)
            started = time.monotonic()
            async with http.post(gateway + "/api/v1/enhance", data=form) as resp:
                task = await resp.json()
                if resp.status != 200:
                    raise SystemExit(f"upload refused: HTTP {resp.status}: {task.get('error')}")
            task_id = task["task_id"]
            print(f"submitted  {photo.name} -> task {task_id}")
            while task["status"] not in ("completed", "failed"):
                await asyncio.sleep(0.25)
                async with http.get(f"{gateway}/api/v1/status/{task_id}") as resp:
                    task = await resp.json()
            if task["status"] == "failed":
                raise SystemExit(f"the task failed: {task['error']}")
            async with http.get(gateway + task["result_url"]) as resp:
                result = await resp.read()
                ext = resp.headers["Content-Type"].split("/")[-1].replace("jpeg", "jpg")
            target = out / f"{photo.stem}_enhanced.{ext}"
            target.write_bytes(result)
            from PIL import Image

            with Image.open(photo) as before, Image.open(target) as after:
                print(f"enhanced   {before.size[0]}x{before.size[1]} -> {after.size[0]}x{after.size[1]} "
                      f"by {task['server_id']} in {time.monotonic() - started:.1f}s: {target}")
            if args.once:
                return 0
            # The handlers first: a Ctrl-C right after the line that invites it must stop cleanly.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
                loop.add_signal_handler(sig, stop.set)
            print("\nRunning. Try:\n"
                  f"  curl -F file=@{photo} {gateway}/api/v1/enhance\n"
                  f"  curl '{gateway}/webhook/servers?secret={SECRET}'\n"
                  "Ctrl-C stops both.")
            await stop.wait()
            return 0
    finally:
        # The node first, so it can unregister from a gateway that is still up.
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for fh in logs.values():
            fh.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default=str(REPO / "examples" / "rocket.jpg"), help="photo to enhance")
    parser.add_argument("--once", action="store_true", help="exit after the photo is enhanced")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (another if busy)")
    parser.add_argument("--node-port", type=int, default=8000, help="gpunode port (another if busy)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
