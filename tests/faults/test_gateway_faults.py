"""Gateway faults with a real gateway process: SIGKILL mid-run and restart on the same data
dir (with the SQLite file the kill left), a damaged database, a lost store that the nodes
re-register with by themselves."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import aiohttp
from faults_support import Procs, sim_node_argv
from helpers.photos import digest, unique_photo
from helpers.polling import eventually
from helpers.public_api import download, servers, status, submit, wait_finished
from support import wait_until

CONFIG = """
health_check:
  interval: 0.2
  timeout: 0.5
dispatch:
  timeout: 10
  retry_backoff: 0.2
"""


async def _fleet_up(session: aiohttp.ClientSession, base: str, count: int) -> None:
    async def up() -> bool:
        listed = await servers(session, base)
        return len(listed) == count and all(s["status"] == "healthy" for s in listed)

    await eventually(up, 30, f"{count} healthy nodes")


async def test_gateway_sigkilled_mid_run_restarts_on_same_data_dir(gateway_process, procs: Procs, session,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path) -> None:
    gw = gateway_process(CONFIG)
    gw.start()
    await gw.wait_ready(session)
    for i in range(2):  # 0.15 s a photo
        await procs.serve(f"node{i}", lambda p, i=i: sim_node_argv(p, gw.url, tmp_path / f"state{i}", speed=0.008,
                                                                   gateway_check=1.0))
    await _fleet_up(session, gw.url, 2)
    before = {s["server_id"]: s["port"] for s in await servers(session, gw.url)}
    sent = {await submit(session, gw.url, unique_photo(i)): unique_photo(i) for i in range(30)}

    async def some_done() -> bool:
        return sum([(await status(session, gw.url, t))["status"] == "completed" for t in sent]) >= 4

    await wait_until(some_done, 20, "a few tasks to complete")
    gw.kill()  # SIGKILL: no cleanup, the database left as it was

    # The SQLite file the kill left: its WAL is there and the whole thing is consistent.
    db = gw.data_dir / "photogate.db"
    assert db.exists() and Path(f"{db}-wal").exists()
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", copy / f"photogate.db{suffix}")
    conn = sqlite3.connect(copy / "photogate.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(conn.execute("SELECT task_id, status FROM tasks").fetchall())
    finally:
        conn.close()
    assert set(rows) == set(sent), "an accepted task is missing from the database"
    done_at_kill = sum(s == "completed" for s in rows.values())
    assert 4 <= done_at_kill < 30, "the run was not interrupted mid-way"

    gw.start()
    await gw.wait_ready(session)
    finals = await wait_finished(session, gw.url, list(sent), 40)
    assert {f["status"] for f in finals.values()} == {"completed"}, finals
    for task_id, photo in sent.items():
        code, body = await download(session, gw.url, task_id)
        assert code == 200 and digest(body) == digest(photo), f"task {task_id}: wrong or missing result"
    assert {s["server_id"]: s["port"] for s in await servers(session, gw.url)} == before
    assert not list((gw.data_dir / "blobs").rglob("*.part")), "half-written files left behind"


async def test_damaged_database_refused_with_a_clear_error(gateway_process) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_process(CONFIG)
    gw.data_dir.mkdir(parents=True)
    (gw.data_dir / "photogate.db").write_bytes(b"not a database; a disk error or a bad copy " * 10)
    gw.start()
    assert gw.proc is not None
    rc = gw.proc.wait(30)
    log = gw.log.read_text()
    assert rc == 3, log
    assert "photogate: data error:" in log and "photogate.db" in log and "Traceback" not in log


async def test_node_reregisters_after_gateway_lost_its_store(gateway_process, procs: Procs, session,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path) -> None:
    gw = gateway_process(CONFIG)
    gw.start()
    await gw.wait_ready(session)
    port = await procs.serve("node", lambda p: sim_node_argv(p, gw.url, tmp_path / "state", speed=1.0,
                                                             gateway_check=0.3))
    await _fleet_up(session, gw.url, 1)
    first = await submit(session, gw.url, unique_photo(1))
    assert (await wait_finished(session, gw.url, [first], 20))[first]["status"] == "completed"

    gw.kill()
    shutil.rmtree(gw.data_dir)  # the store is gone: no registry, no tasks, no counter
    gw.start()
    await gw.wait_ready(session)
    await _fleet_up(session, gw.url, 1)  # the node noticed and registered again, by itself
    listed = await servers(session, gw.url)
    assert [(s["server_id"], s["port"]) for s in listed] == [("GPU-001", port)]
    async with session.get(f"{gw.url}/api/v1/status/{first}") as resp:
        assert resp.status == 404  # that task went with the store, and says so
    photo = unique_photo(2)
    task_id = await submit(session, gw.url, photo)
    assert (await wait_finished(session, gw.url, [task_id], 20))[task_id]["status"] == "completed"
    code, body = await download(session, gw.url, task_id)
    assert code == 200 and digest(body) == digest(photo)
