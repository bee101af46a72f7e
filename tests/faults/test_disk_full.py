"""The data disk full: results that cannot be stored fail their task with a clear error (and
no node is blamed), uploads get 503 with Retry-After, what was accepted stays intact, and
everything resumes once there is room.

As root the data dir is a real 4 MiB tmpfs that is filled up; elsewhere (no mount
permission) the blob writer is made to raise ENOSPC, which is what a full disk raises.
"""

from __future__ import annotations

import asyncio
import errno
import io
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ci_skips import fell_back
from faults_support import Procs, control, fault_node_argv, wait_answers
from helpers.photos import digest, unique_photo
from helpers.public_api import download, register, status, submit, wait_finished
from PIL import Image

from photogate.blobs import BlobWriter
from photogate.keys import GATEWAY


def noise_photo(seed: int, side: int = 420) -> bytes:
    """A PNG that does not compress: ~0.5 MB."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


class SmallDisk:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.filler = root / "filler"
        self.real = False
        self._monkeypatch = monkeypatch
        self.full = False

    def fill(self, leave: int = 160 * 1024) -> None:
        """Fill the disk, leaving ``leave`` bytes: room for the database, not for a photo."""
        self.full = True
        if not self.real:
            return
        # Unbuffered: a buffered file would keep the bytes that did not fit and raise ENOSPC
        # again when it is closed.
        with self.filler.open("wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        size = self.filler.stat().st_size
        with self.filler.open("r+b") as fh:
            fh.truncate(max(size - leave, 0))

    def free(self) -> None:
        self.full = False
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    disk = SmallDisk(root, monkeypatch)
    try:
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)],
                               capture_output=True, timeout=10, check=False)
        mounted, why = mount.returncode == 0, mount.stderr.decode(errors="replace").strip()
    except OSError as exc:  # no mount(8) here
        mounted, why = False, str(exc)
    disk.real = mounted
    if not mounted:
        # Weaker evidence than a real full disk: reported, and a failure under CI=true (root there).
        fell_back(request.node,
                  f"no tmpfs could be mounted ({why or 'mount failed'}); BlobWriter patched to raise ENOSPC")
        def enospc(original: Callable[..., Any]) -> Callable[..., Any]:
            async def write(self: BlobWriter, *args: Any, **kwargs: Any) -> Any:
                if disk.full:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return await original(self, *args, **kwargs)
            return write

        monkeypatch.setattr(BlobWriter, "write", enospc(BlobWriter.write))
        monkeypatch.setattr(BlobWriter, "commit", enospc(BlobWriter.commit))
    yield disk
    if mounted:
        subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=10, check=False)


async def test_disk_full_refuses_cleanly_and_resumes(  # type: ignore[no-untyped-def]
        make_gateway, small_disk: SmallDisk, procs: Procs, session) -> None:
    gw = await make_gateway(**{"storage.data_dir": str(small_disk.root / "data"), "health_check.interval": 0.1})
    base = str(gw.client.make_url("")).rstrip("/")
    port = await procs.serve("node", lambda p: fault_node_argv(p, "ok"))
    await wait_answers(session, f"http://127.0.0.1:{port}/_stats")
    server_id = (await register(session, base, port))["server_id"]

    early = unique_photo(1)
    early_id = await submit(session, base, early)
    assert (await wait_finished(session, base, [early_id], 15))[early_id]["status"] == "completed"

    await control(session, port, delay=1.5)  # the next results arrive after the disk is full
    big = {await submit(session, base, noise_photo(i)): noise_photo(i) for i in (2, 3)}
    small_disk.fill()

    finals = await wait_finished(session, base, list(big), 20)
    for task_id, final in finals.items():
        assert final["status"] == "failed", final
        assert "could not store the result" in final["error"] and "No space left" in final["error"], final["error"]
        code, _ = await download(session, base, task_id)
        assert code == 409
    node = gw.app[GATEWAY].registry.get(server_id)
    assert node is not None and node.healthy and node.failures == 0, "the node was blamed for the gateway's disk"

    form_photo = noise_photo(4)
    form = aiohttp.FormData()
    form.add_field("file", form_photo, filename="big.png", content_type="image/png")
    async with session.post(base + "/api/v1/enhance", data=form) as resp:
        body = await resp.json()
        assert resp.status == 503 and "storage is full" in body["error"] and resp.headers["Retry-After"], body
    # What was accepted is intact: the finished result, and the failed tasks' inputs.
    code, result = await download(session, base, early_id)
    assert code == 200 and digest(result) == digest(early)
    inputs = small_disk.root / "data" / "blobs" / "inputs"
    for task_id, photo in big.items():
        assert digest((inputs / task_id).read_bytes()) == digest(photo)
    assert not list((small_disk.root / "data" / "blobs").rglob("*.part"))

    small_disk.free()
    await control(session, port, delay=0)
    task_id = await submit(session, base, form_photo)
    assert (await wait_finished(session, base, [task_id], 15))[task_id]["status"] == "completed"
    code, result = await download(session, base, task_id)
    assert code == 200 and digest(result) == digest(form_photo)
    assert (await status(session, base, early_id))["status"] == "completed"


async def test_disk_completely_full_keeps_tasks_until_there_is_room(make_gateway, small_disk: SmallDisk,  # type: ignore[no-untyped-def]
                                                                    procs: Procs, session,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a byte left: not even the failure can be recorded. Tasks wait, and finish once there is room."""
    if not small_disk.real:
        pytest.skip("needs a real full disk: run as root, where a tmpfs can be mounted")
    from photogate.dispatch import Dispatcher

    monkeypatch.setattr(Dispatcher, "STORE_RETRY_DELAY", 0.3)
    gw = await make_gateway(**{"storage.data_dir": str(small_disk.root / "data"), "health_check.interval": 0.1})
    base = str(gw.client.make_url("")).rstrip("/")
    port = await procs.serve("node", lambda p: fault_node_argv(p, "ok", delay=1.0))
    await wait_answers(session, f"http://127.0.0.1:{port}/_stats")
    server_id = (await register(session, base, port))["server_id"]
    big = {await submit(session, base, noise_photo(i)): noise_photo(i) for i in (5, 6)}
    small_disk.fill(leave=0)

    deadline = asyncio.get_running_loop().time() + 3
    while asyncio.get_running_loop().time() < deadline:  # a bounded watch, not a sleep
        for task_id in big:
            assert (await status(session, base, task_id))["status"] in ("queued", "processing")
        await asyncio.sleep(0.1)
    node = gw.app[GATEWAY].registry.get(server_id)
    assert node is not None and node.healthy

    small_disk.free()
    await control(session, port, delay=0)
    finals = await wait_finished(session, base, list(big), 20)
    assert {f["status"] for f in finals.values()} == {"completed"}, finals
    for task_id, photo in big.items():
        code, result = await download(session, base, task_id)
        assert code == 200 and digest(result) == digest(photo)
