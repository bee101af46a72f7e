"""bench/soak.py itself, small: 200 photos, faults every second, nothing lost, nothing mixed up,
no failure that the faults do not explain. The nodes answer each photo mirrored, so a gateway
that served the input back as the result fails here."""

from __future__ import annotations

import asyncio
import re
import sys

from support import REPO


async def test_small_soak_loses_nothing() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bench" / "soak.py"), "--jobs", "200", "--fault-every", "1", "--deadline", "60",
        "--sim-nodes", "2", "--fault-nodes", "1", "--concurrency", "8",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 110)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    figures = {m[0].strip(): m[1].strip() for m in re.findall(r"^\| ([^|]+) \| ([^|]+) \|$", text, re.MULTILINE)}
    assert figures["accepted (HTTP 200)"] == "200"
    assert figures["lost (404, or queued/processing at the end)"] == "0"
    assert figures["wrong content (not the photo mirrored)"] == "0"
    assert figures["failed, unexplained by the faults"] == "0"
    assert int(figures["completed"]) + int(figures["failed"]) == 200
    assert int(figures["completed"]) > 0  # the mirrored results were downloaded and compared
    assert int(figures["faults injected"]) >= 3
