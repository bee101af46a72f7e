"""SIGKILL in the middle of group commits (issue 17): a real gateway process under concurrent
uploads is killed while batches of records and shared directory fsyncs are in flight, then
restarted on the same data dir. Every task whose id was answered is found and completes, with
its photo: the group commit answers a client only once its task's batch is durable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from helpers.public_api import download, register, submit, wait_finished
from support import FakeNode, image_bytes

CONFIG = """
health_check:
  interval: 0.3
  timeout: 1
dispatch:
  timeout: 10
rate_limit:
  enabled: false
"""

CLIENTS = 16
PER_CLIENT = 40
#: Killed once this many ids were answered, with every client still uploading.
KILL_AFTER = 60


async def _uploader(session: aiohttp.ClientSession, url: str, answered: list[str], kill: Callable[[], None]) -> int:
    """Upload until the gateway dies (or PER_CLIENT uploads); every id answered goes in
    ``answered``, and the KILL_AFTER-th answer kills the gateway at once (SIGKILL), while the
    other clients' uploads are being committed. Returns how many uploads the kill cut off."""
    cut = 0
    for _ in range(PER_CLIENT):
        form = aiohttp.FormData()
        form.add_field("file", image_bytes(32, 24), filename="p.png", content_type="image/png")
        try:
            async with session.post(url + "/api/v1/enhance", data=form) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                answered.append(body["task_id"])
        except (aiohttp.ClientError, OSError):
            cut += 1
            break
        if len(answered) >= KILL_AFTER:
            kill()
            break
    return cut


async def test_sigkill_mid_group_commit_loses_no_answered_task(gateway_process, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet: list[FakeNode] = [await nodes(delay=0.02, slots=2) for _ in range(2)]
    gw = gateway_process(CONFIG)
    gw.start()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
        await gw.wait_ready(session)
        for node in fleet:
            body = await register(session, gw.url, node.port)
            node.token, node.server_id = body["node_token"], body["server_id"]

        answered: list[str] = []
        clients = [asyncio.create_task(_uploader(session, gw.url, answered, gw.kill)) for _ in range(CLIENTS)]
        cut = sum(await asyncio.wait_for(asyncio.gather(*clients), 60))
        assert len(answered) >= KILL_AFTER, gw.log.read_text()[-3000:]
        assert cut > 0, "no upload was in flight at the kill: the test did not kill mid-commit"
        ids = list(dict.fromkeys(answered))
        assert len(ids) == len(answered), "an id was answered twice"

        gw.start()
        await gw.wait_ready(session)
        finals = await wait_finished(session, gw.url, ids, 60)  # a lost task fails here (404)
        assert {task_id: f["status"] for task_id, f in finals.items()} == dict.fromkeys(ids, "completed")
        for task_id in ids:
            code, data = await download(session, gw.url, task_id)
            assert code == 200 and data.startswith(b"\x89PNG"), (task_id, code)


async def test_a_record_whose_photo_never_reached_the_disk_fails_cleanly(gateway_process, nodes) -> None:  # type: ignore[no-untyped-def]
    # An upload's record and its file become durable concurrently, and its id is answered only
    # once both are. A crash between the two leaves a record without its photo, whose id no
    # client ever saw: after the restart it fails at once with a message, and runs on no node.
    from photogate.models import TaskRecord, TaskStatus
    from photogate.storage.sqlite.store import SQLiteStore

    gw = gateway_process(CONFIG)
    task_id = "f" * 32
    store = await SQLiteStore.open(gw.data_dir / "photogate.db")
    try:
        await store.insert_task(TaskRecord(task_id=task_id, status=TaskStatus.QUEUED, created_at=1.0, updated_at=1.0,
                                           input_mime="image/png", input_bytes=100, width=32, height=24, params={}))
    finally:
        await store.close()
    node = await nodes()
    gw.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        await gw.wait_ready(session)
        body = await register(session, gw.url, node.port)
        node.token, node.server_id = body["node_token"], body["server_id"]
        final = (await wait_finished(session, gw.url, [task_id], 20))[task_id]
        assert final["status"] == "failed" and "upload it again" in final["error"], final
        # The gateway goes on: the next upload completes.
        ok = await submit(session, gw.url, image_bytes(32, 24))
        assert (await wait_finished(session, gw.url, [ok], 20))[ok]["status"] == "completed"
    assert node.jobs == 1
