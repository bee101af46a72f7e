"""The public task API end to end: upload checks, dispatch, retries, status and download."""

from __future__ import annotations

import asyncio
import errno
import io
import struct
import threading
import time
import zlib

import pytest
from aiohttp import FormData
from PIL import Image
from support import ADMIN_TOKEN, SECRET, Gateway, image_bytes, wait_until

from photogate.blobs import BlobWriter
from photogate.keys import GATEWAY


async def _post_file(gateway: Gateway, data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg"):  # type: ignore[no-untyped-def]
    form = FormData()
    form.add_field("file", data, filename=filename, content_type=content_type)
    return await gateway.client.post("/api/v1/enhance", data=form)


async def test_photo_enhanced_end_to_end(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    task_id = await gateway.submit(image_bytes(40, 30))
    assert len(task_id) == 32 and int(task_id, 16) >= 0
    final = await gateway.wait_done(task_id)
    assert final["status"] == "completed", final
    assert final["progress"] == 1.0 and final["server_id"] == "GPU-001" and final["error"] is None
    assert final["result_url"] == f"/api/v1/download/{task_id}"
    resp = await gateway.client.get(final["result_url"])
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Disposition"] == f'attachment; filename="enhanced_{task_id}.png"'
    with Image.open(io.BytesIO(await resp.read())) as im:
        assert im.size == (80, 60)
    assert node.seen_tokens == [f"Bearer {node.token}"]


async def test_unknown_and_unready_tasks(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    for path in ("/api/v1/status/" + "0" * 32, "/api/v1/download/" + "0" * 32, "/api/v1/status/..%2F..%2Fetc"):
        resp = await gateway.client.get(path)
        assert resp.status == 404
        assert "unknown task" in (await resp.json())["error"]
    node = await nodes(delay=0.5)
    await gateway.register(node)
    task_id = await gateway.submit()
    resp = await gateway.client.get(f"/api/v1/download/{task_id}")
    assert resp.status == 409
    assert "not ready" in (await resp.json())["error"]
    await gateway.wait_done(task_id)


async def test_upload_checks(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"limits.max_upload_bytes": 200_000, "limits.max_pixels": 1_000_000})
    await gateway.register(await nodes())

    resp = await _post_file(gateway, b"hello, I am a text file\n" * 10, "notes.jpg")
    assert resp.status == 415 and "not a supported image" in (await resp.json())["error"]

    # A tiny PNG whose header claims 50 000 x 50 000 pixels: refused from the header alone.
    bomb = _png_claiming(50_000, 50_000)
    resp = await _post_file(gateway, bomb, "bomb.png", "image/png")
    assert resp.status == 413 and "megapixel" in (await resp.json())["error"]

    jpeg = image_bytes(300, 200, "JPEG")
    resp = await _post_file(gateway, jpeg[: len(jpeg) // 2], "cut.jpg")
    assert resp.status == 400 and "truncated or corrupt" in (await resp.json())["error"]

    png = image_bytes(300, 200, "PNG")
    resp = await _post_file(gateway, png[:-20], "cut.png", "image/png")
    assert resp.status == 400 and "truncated or corrupt" in (await resp.json())["error"]

    resp = await _post_file(gateway, b"")
    assert resp.status == 400 and "empty" in (await resp.json())["error"]

    resp = await _post_file(gateway, b"\xff\xd8\xff" + b"\0" * 300_000)
    assert resp.status == 413 and "limit" in (await resp.json())["error"]

    form = FormData()
    form.add_field("photo", image_bytes(), filename="x.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance", data=form)
    assert resp.status == 400 and "'file'" in (await resp.json())["error"]

    resp = await gateway.client.post("/api/v1/enhance", json={"file": "x"})
    assert resp.status == 400 and "multipart" in (await resp.json())["error"]
    resp = await gateway.client.post("/api/v1/enhance", data=b"--x\r\n",
                                     headers={"Content-Type": "multipart/form-data"})
    assert resp.status == 400 and "boundary" in (await resp.json())["error"]

    form = FormData()
    form.add_field("file", image_bytes(), filename="x.png", content_type="image/png")
    form.add_field("scale", "banana")
    resp = await gateway.client.post("/api/v1/enhance", data=form)
    assert resp.status == 400 and "scale" in (await resp.json())["error"]

    # Nothing refused was kept.
    store = gateway.app[GATEWAY].store
    assert sum((await store.count_tasks()).values()) == 0
    blobs = gateway.app[GATEWAY].blobs
    assert list(blobs.inputs.iterdir()) == []


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))


async def test_old_client_fields_are_accepted(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    task_id = await gateway.submit(image_bytes(), tile_size="400", quality_level="high", format="jpeg")
    assert (await gateway.wait_done(task_id))["status"] == "completed"


async def test_round_robin_sequential_30_tasks_split_10_10_10(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet = [await nodes() for _ in range(3)]
    for node in fleet:
        await gateway.register(node)
    served = []
    for _ in range(30):
        final = await gateway.wait_done(await gateway.submit())
        assert final["status"] == "completed"
        served.append(final["server_id"])
    assert served[:4] == ["GPU-001", "GPU-002", "GPU-003", "GPU-001"]
    assert [n.jobs for n in fleet] == [10, 10, 10]


async def test_30_at_once_all_complete_and_respect_slots(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet = [await nodes(delay=0.05) for _ in range(3)]
    for node in fleet:
        await gateway.register(node)
    ids = await asyncio.gather(*(gateway.submit() for _ in range(30)))
    finals = await asyncio.gather(*(gateway.wait_done(t, 30) for t in ids))
    assert [f["status"] for f in finals] == ["completed"] * 30
    assert sum(n.jobs for n in fleet) == 30
    assert all(n.max_busy == 1 for n in fleet)  # one slot each: never two jobs at once on a node


# Stopping the fake node mid-request leaks its server-side socket, which Python reports
# when it is collected; that is the killed node's debris, not the gateway's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_killed_node_loses_no_task_and_comes_back(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"health_check.interval": 0.3})
    fleet = [await nodes(delay=0.05) for _ in range(3)]
    for node in fleet:
        await gateway.register(node)
    ids = await asyncio.gather(*(gateway.submit() for _ in range(30)))
    await fleet[1].stop()  # killed while work is queued for it
    finals = await asyncio.gather(*(gateway.wait_done(t, 30) for t in ids))
    assert [f["status"] for f in finals] == ["completed"] * 30
    assert fleet[0].jobs + fleet[2].jobs + fleet[1].jobs == 30
    registry = gateway.app[GATEWAY].registry
    await wait_until(lambda: not registry.get("GPU-002").healthy, 5, "GPU-002 marked unhealthy")
    assert registry.get("GPU-002").failures >= 3
    await fleet[1].start()
    await wait_until(lambda: registry.get("GPU-002").healthy, 5, "GPU-002 healthy again")
    # It takes work again.
    for _ in range(3):
        await gateway.wait_done(await gateway.submit())
    assert fleet[1].jobs >= 1


async def test_node_5xx_retries_elsewhere_and_4xx_fails_at_once(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    bad, good = await nodes(), await nodes()
    await gateway.register(bad)
    await gateway.register(good)
    bad.mode = "error500"
    for _ in range(4):
        final = await gateway.wait_done(await gateway.submit())
        assert final["status"] == "completed" and final["server_id"] == "GPU-002"

    bad.mode = good.mode = "reject400"
    final = await gateway.wait_done(await gateway.submit())
    assert final["status"] == "failed" and final["attempts"] == 1
    assert "could not process this image: cannot decode image" in final["error"]
    resp = await gateway.client.get(f"/api/v1/download/{final['task_id']}")
    assert resp.status == 409


async def test_bounded_attempts_then_failed_with_reason(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"dispatch.max_attempts": 2, "health_check.failure_threshold": 100})
    node = await nodes()
    await gateway.register(node)
    node.mode = "garbage"  # answers 200 with something that is not an image
    final = await gateway.wait_done(await gateway.submit())
    assert final["status"] == "failed" and final["attempts"] == 2
    assert "failed after 2 attempts" in final["error"] and "unreadable image" in final["error"]


async def test_hanging_node_times_out_and_task_moves_on(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"dispatch.timeout": 0.5})
    hang, good = await nodes(), await nodes()
    hang.mode = "hang"
    await gateway.register(hang)
    await gateway.register(good)
    finals = [await gateway.wait_done(await gateway.submit()) for _ in range(2)]
    assert all(f["status"] == "completed" and f["server_id"] == "GPU-002" for f in finals)


async def test_no_healthy_node_503_with_retry_after_then_resumes(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"limits.retry_after": 7})
    form = FormData()
    form.add_field("file", image_bytes(), filename="x.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance", data=form)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    reason = "服务暂时不可用，请稍后重试 (no GPU server is registered: uploads are refused until one registers)"
    assert (await resp.json()) == {"success": False, "error": reason, "message": reason}
    health = await (await gateway.client.get("/api/v1/health")).json()
    assert health["status"] == "degraded" and health["fleet"]["total"] == 0

    node = await nodes()
    await gateway.register(node)
    final = await gateway.wait_done(await gateway.submit())
    assert final["status"] == "completed"
    health = await (await gateway.client.get("/api/v1/health")).json()
    assert health["status"] == "healthy" and health["fleet"]["healthy"] == 1


async def test_multi_backend_off_sends_everything_to_the_primary(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    fleet = [await nodes() for _ in range(2)]
    for node in fleet:
        await gateway.register(node)
    resp = await gateway.client.post("/api/v1/config/multi-backend", json={"enabled": False})
    assert resp.status == 401
    resp = await gateway.client.post("/api/v1/config/multi-backend", json={"enabled": False},
                                     headers={"Authorization": "Bearer wrong"})
    assert resp.status == 403
    resp = await gateway.client.post("/api/v1/config/multi-backend", json={"enabled": False},
                                     headers=gateway.admin_headers())
    assert resp.status == 200 and (await resp.json())["multi_backend"] is False
    for _ in range(4):
        await gateway.wait_done(await gateway.submit())
    assert [n.jobs for n in fleet] == [4, 0]
    # The primary goes away: the next node takes over.
    await gateway.client.post("/webhook/unregister", json={"server_id": "GPU-001", "secret": SECRET})
    await gateway.wait_done(await gateway.submit())
    assert fleet[1].jobs == 1
    config = await (await gateway.client.get("/api/v1/admin/config", headers=gateway.admin_headers())).json()
    assert config["multi_backend"] == {"enabled": False}
    assert config["webhook"]["secret"] == "***" and ADMIN_TOKEN not in repr(config)


async def test_wait_query_answers_with_the_final_status(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes(delay=0.1))
    form = FormData()
    form.add_field("file", image_bytes(), filename="x.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance?wait=10", data=form)
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "completed" and body["result_url"]


async def test_wait_with_inline_result_answers_with_the_image(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes()
    await gateway.register(node)
    photo = image_bytes(30, 20)
    form = FormData()
    form.add_field("file", photo, filename="x.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance?wait=10&result=inline", data=form)
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png", await resp.text()
    task_id = resp.headers["X-Task-ID"]
    assert resp.headers["X-Task-Status"] == "completed"
    image = await resp.read()
    with Image.open(io.BytesIO(image)) as im:
        assert im.size == (60, 40)
    # Still a task like any other: its status and the same bytes by download.
    assert (await gateway.status(task_id))["status"] == "completed"
    again = await gateway.client.get(f"/api/v1/download/{task_id}")
    assert again.status == 200 and await again.read() == image

    # Not finished in time: the status as JSON, as without result=inline.
    node.delay = 1.0
    form = FormData()
    form.add_field("file", photo, filename="x.png", content_type="image/png")
    resp = await gateway.client.post("/api/v1/enhance?wait=0.1&result=inline", data=form)
    body = await resp.json()
    assert resp.status == 200 and body["status"] in ("queued", "processing") and body["result_url"] is None
    assert (await gateway.wait_done(body["task_id"]))["status"] == "completed"

    # Bad combinations are refused before anything is accepted.
    gw = gateway.app[GATEWAY]
    before = await gw.store.count_tasks()
    for query, hint in (("result=inline", "wait=SECONDS"), ("wait=5&result=image", "result: must be")):
        form = FormData()
        form.add_field("file", photo, filename="x.png", content_type="image/png")
        resp = await gateway.client.post(f"/api/v1/enhance?{query}", data=form)
        assert resp.status == 400 and hint in (await resp.json())["error"]
    assert await gw.store.count_tasks() == before


async def test_small_upload_on_a_full_disk_leaves_nothing(  # type: ignore[no-untyped-def]
        gateway: Gateway, nodes, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small photo is published, checked and recorded in one trip to the store's thread:
    # whatever fails there, no task, no file and no half-written file remain.
    await gateway.register(await nodes())
    gw = gateway.app[GATEWAY]
    folder = gw.blobs.inputs

    def left() -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    def disk_full(self: BlobWriter, then: object = None) -> None:
        self._flush_sync()  # the .part file is there, as when a real disk fills up mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobWriter, "publish", disk_full)
    resp = await _post_file(gateway, image_bytes(), "x.png", "image/png")
    body = await resp.json()
    assert resp.status == 503 and "storage is full" in body["error"] and resp.headers["Retry-After"], body
    assert left() == [] and sum((await gw.store.count_tasks()).values()) == 0
    monkeypatch.undo()
    task_id = await gateway.submit()
    assert (await gateway.wait_done(task_id))["status"] == "completed"
    assert left() == [task_id]


async def test_server_stopping_mid_upload_keeps_file_and_record_together(gateway: Gateway,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The handler is cancelled while its photo is being recorded on the store's thread: the
    # record, the file and the queue must still agree (a restart runs what was recorded).
    from photogate import api
    from photogate.access import Admission, access_policy

    gw = gateway.app[GATEWAY]
    entered, proceed = threading.Event(), threading.Event()
    original = gw.store._insert_sync

    def slow_insert(task):  # type: ignore[no-untyped-def]
        entered.set()
        proceed.wait(5)
        return original(task)

    monkeypatch.setattr(gw.store, "_insert_sync", slow_insert)
    task_id = "c" * 32
    writer = gw.blobs.input_writer(task_id)
    await writer.write(image_bytes())
    handler = asyncio.ensure_future(api._accept(gw, access_policy(gateway.app), Admission(), task_id, writer, {}))
    assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
    handler.cancel()
    await asyncio.sleep(0.05)
    assert not handler.done(), "a cancelled handler must wait for the store's trip"
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await handler
    stored = await gw.store.get_task(task_id)
    assert stored is not None and stored.status.value == "queued"
    assert gw.blobs.input_path(task_id).read_bytes() == image_bytes()
    assert gw.dispatcher.queued == 1


async def test_task_whose_photo_was_removed_fails_clearly(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes(delay=0.5)
    await gateway.register(node)
    gw = gateway.app[GATEWAY]
    busy = await gateway.submit()
    waiting = await gateway.submit()  # queued behind it: the node has one slot
    gw.blobs.input_path(waiting).unlink()  # an operator's clean-up gone wrong
    gw.blobs.forget_input(waiting)
    final = await gateway.wait_done(waiting)
    assert final["status"] == "failed" and "no longer stored" in final["error"], final
    assert (await gateway.wait_done(busy))["status"] == "completed"
    state = gw.registry.get(node.server_id)
    assert state is not None and state.healthy and state.failures == 0, "the node was blamed"


async def test_status_answer_follows_the_task(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    # Status answers are encoded once per change of the task: polls must still see each change.
    node = await nodes(delay=0.6)
    await gateway.register(node)
    task_id = await gateway.submit()
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = await gateway.status(task_id)
        if not seen or seen[-1] != status["status"]:
            seen.append(status["status"])
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert seen[-2:] == ["processing", "completed"], seen
    assert status["result_url"] == f"/api/v1/download/{task_id}" and status["progress"] == 1.0
    assert status["server_id"] == node.server_id and status["attempts"] == 1


async def test_log_lines_of_a_request_carry_its_id(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    import structlog

    from photogate.logsetup import add_request_id

    await gateway.register(await nodes())
    form = FormData()
    form.add_field("file", image_bytes(), filename="x.png", content_type="image/png")
    with structlog.testing.capture_logs(processors=[add_request_id]) as logs:
        resp = await gateway.client.post("/api/v1/enhance", data=form, headers={"X-Request-ID": "trace-42"})
        task_id = (await resp.json())["task_id"]
        await gateway.wait_done(task_id)
    accepted = [e for e in logs if e["event"] == "task_accepted"]
    assert len(accepted) == 1 and accepted[0]["request_id"] == "trace-42" and accepted[0]["task_id"] == task_id
    # The dispatcher's lines are not the request's.
    assert all("request_id" not in e for e in logs if e["event"] == "task_dispatched")


async def test_request_id_and_cors(gateway: Gateway) -> None:
    resp = await gateway.client.get("/api/v1/health", headers={"X-Request-ID": "abc123", "Origin": "http://x.example"})
    assert resp.headers["X-Request-ID"] == "abc123"
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "http://x.example")
    resp = await gateway.client.options("/api/v1/enhance", headers={
        "Origin": "http://x.example", "Access-Control-Request-Method": "POST"})
    assert resp.status == 200
    info = await (await gateway.client.get("/api/v1/info")).json()
    assert "POST /api/v1/enhance" in info["endpoints"] and info["strategy"] == "round_robin"


async def test_finished_tasks_expire_with_their_files(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    task_id = await gateway.submit()
    await gateway.wait_done(task_id)
    gw = gateway.app[GATEWAY]
    assert await gw.expire() == 0  # younger than task_ttl: kept
    assert await gw.expire(now=time.time() + gw.config.storage.task_ttl + 1) == 1
    resp = await gateway.client.get(f"/api/v1/status/{task_id}")
    assert resp.status == 404
    assert not gw.blobs.input_path(task_id).exists() and not gw.blobs.result_path(task_id).exists()


async def test_client_ip_from_trusted_proxy_only(make_gateway) -> None:  # type: ignore[no-untyped-def]
    import structlog

    gateway = await make_gateway(**{"server.trusted_proxies": ["127.0.0.1"]})
    with structlog.testing.capture_logs() as logs:
        await gateway.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 1, "secret": "x"},
                                  headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.1"})
    assert [e["client_ip"] for e in logs if e.get("event") == "audit"] == ["203.0.113.9"]
    untrusting = await make_gateway(**{"storage.data_dir": str(gateway.app[GATEWAY].config.data_path) + "2"})
    with structlog.testing.capture_logs() as logs:
        await untrusting.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 1, "secret": "x"},
                                     headers={"X-Forwarded-For": "203.0.113.9"})
    assert [e["client_ip"] for e in logs if e.get("event") == "audit"] == ["127.0.0.1"]


async def test_the_queue_reports_its_own_depth_on_either_backend(start_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    """Tasks waiting for the one busy slot count against ``limits.max_queue``, whether they wait
    in this gateway's heap (SQLite) or unclaimed in the shared queue (Redis)."""
    gw = await start_gateway(**{"limits.max_queue": 2})
    node = await nodes(delay=2.0)
    await gw.register(node)
    first = await gw.submit()
    await wait_until(lambda: gw.app[GATEWAY].dispatcher.in_flight == 1, 5, "the first task to start")
    await gw.submit()
    await gw.submit()

    async def two_queued() -> bool:
        resp = await gw.client.get("/api/v1/health")
        return (await resp.json())["fleet"]["queued"] == 2

    await wait_until(two_queued, 5, "two tasks queued behind the busy slot")
    form = FormData()
    form.add_field("file", image_bytes(), filename="photo.png", content_type="image/png")
    resp = await gw.client.post("/api/v1/enhance", data=form)
    assert resp.status == 503 and resp.headers["Retry-After"] == "30"
    assert "queue is full" in (await resp.json())["error"]
    assert (await gw.wait_done(first))["status"] == "completed"
