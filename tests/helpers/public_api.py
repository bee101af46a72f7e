"""A client of the gateway's public and webhook API over HTTP: upload, status, wait, download.

``client`` is an ``aiohttp.ClientSession`` with the gateway's ``base`` URL, or an aiohttp
``TestClient`` with ``base=""`` (it prefixes its own server's URL)."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from .photos import image_bytes
from .polling import wait_until

#: The webhook secret of every test gateway.
SECRET = "test-secret-0123456789"
#: What a task ends as.
FINISHED = ("completed", "failed")

Client = aiohttp.ClientSession | TestClient[Any, Any]


async def upload(client: Client, base: str, data: bytes | None = None, *, filename: str = "photo.png",
                 content_type: str = "image/png", **fields: str) -> dict[str, Any]:
    """``POST /api/v1/enhance`` with ``data`` (a small PNG by default) and form ``fields``;
    answers the JSON body of the 200 it must get."""
    form = aiohttp.FormData()
    form.add_field("file", data or image_bytes(), filename=filename, content_type=content_type)
    for key, value in fields.items():
        form.add_field(key, value)
    async with client.post(base + "/api/v1/enhance", data=form) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body)


async def submit(client: Client, base: str, data: bytes | None = None, **fields: str) -> str:
    """Upload a photo; answers its task id."""
    return str((await upload(client, base, data, **fields))["task_id"])


async def status(client: Client, base: str, task_id: str) -> dict[str, Any]:
    async with client.get(f"{base}/api/v1/status/{task_id}") as resp:
        assert resp.status == 200, f"task {task_id} lost: HTTP {resp.status}"
        return dict(await resp.json())


async def wait_finished(client: Client, base: str, ids: list[str],
                        timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The final status of every task in ``ids`` (completed or failed), polled until then."""
    finals: dict[str, dict[str, Any]] = {}

    async def done() -> bool:
        for task_id in ids:
            if finals.get(task_id, {}).get("status") not in FINISHED:
                finals[task_id] = await status(client, base, task_id)
        return all(f["status"] in FINISHED for f in finals.values())

    what = f"task {ids[0]} to finish" if len(ids) == 1 else f"{len(ids)} tasks to finish"
    await wait_until(done, timeout, what)
    return finals


async def download(client: Client, base: str, task_id: str) -> tuple[int, bytes]:
    async with client.get(f"{base}/api/v1/download/{task_id}") as resp:
        return resp.status, await resp.read()


async def register(client: Client, base: str, port: int | None, ip: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    """``POST /webhook/register`` a node at ``ip:port``; answers the JSON body of the 200."""
    async with client.post(base + "/webhook/register",
                           json={"ip": ip, "port": port, "secret": SECRET, **extra}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body)


async def servers(client: Client, base: str) -> list[dict[str, Any]]:
    async with client.get(base + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as resp:
        return list((await resp.json())["data"]["servers"])
