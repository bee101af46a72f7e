"""API keys (issue 18): create, use, revoke (at once, on every gateway), stored only hashed,
daily quotas of photos and megapixels (429 with ``resets_at``, reset at UTC midnight), the
owner and class of every task, ``access.require_key``, and ``photogate-admin keys``."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis
from support import ADMIN_TOKEN, SECRET, Gateway, image_bytes, make_config, wait_until

from photogate.access import ADMISSION, GatewayAccess, OpenAccess
from photogate.access_config import AccessConfig
from photogate.admincli import run
from photogate.app import create_app
from photogate.errors import StoreUnavailable, Unauthorized
from photogate.keys import GATEWAY

Start = Callable[..., Awaitable[Gateway]]
DAY = 86400.0
#: 2026-03-10 23:59:00 UTC: a minute before the day ends.
LATE = 20522 * DAY + 23 * 3600 + 59 * 60


def admin(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(gw: Gateway, **body: Any) -> dict[str, Any]:
    resp = await gw.client.post("/api/v1/admin/keys", json={"name": "web shop", **body}, headers=admin(gw))
    data = await resp.json()
    assert resp.status == 201, data
    return dict(data)


async def keys_listed(gw: Gateway) -> dict[str, dict[str, Any]]:
    resp = await gw.client.get("/api/v1/admin/keys", headers=admin(gw))
    assert resp.status == 200
    return {k["id"]: k for k in (await resp.json())["keys"]}


async def upload(gw: Gateway, headers: dict[str, str] | None = None,
                 data: bytes | None = None) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", data or image_bytes(), filename="photo.png", content_type="image/png")
    return await gw.client.post("/api/v1/enhance", data=form, headers=headers or {})


async def admin_task(gw: Gateway, task_id: str) -> dict[str, Any]:
    resp = await gw.client.get(f"/api/v1/admin/tasks/{task_id}", headers=admin(gw))
    assert resp.status == 200
    return dict((await resp.json())["task"])


async def ready(gw: Gateway, nodes: Any) -> None:
    await gw.register(await nodes())


def set_clock(gw: Gateway, clock: list[float]) -> None:
    keys = gw.app[ADMISSION].keys
    assert keys is not None
    keys.now = lambda: clock[0]


async def test_key_created_used_then_revoked_is_refused_at_once(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    made = await create_key(gw, **{"class": "paid"}, photos_per_day=100)
    key = made["key"]
    assert re.fullmatch(r"pk_[A-Za-z0-9_-]{43}", key) and made["id"] == key[:12]
    assert made["class"] == "paid" and made["photos_per_day"] == 100 and made["megapixels_per_day"] is None

    resp = await upload(gw, bearer(key))
    assert resp.status == 200, await resp.text()
    task_id = (await resp.json())["task_id"]
    status = await gw.client.get(f"/api/v1/status/{task_id}", headers=bearer(key))
    assert status.status == 200
    # Only the key sees its tasks: without it, the task is unknown.
    assert (await gw.client.get(f"/api/v1/status/{task_id}")).status == 404
    detail = await admin_task(gw, task_id)
    assert detail["owner"] == f"key:{made['id']}" and detail["class"] == "paid"
    listed = (await keys_listed(gw))[made["id"]]
    assert listed["used_photos"] == 1 and listed["revoked_at"] is None and "key" not in listed

    resp = await gw.client.delete(f"/api/v1/admin/keys/{made['id']}", headers=admin(gw))
    assert resp.status == 200 and (await resp.json()) == {"success": True, "revoked": made["id"]}
    resp = await upload(gw, bearer(key))
    assert resp.status == 401 and "revoked" in (await resp.json())["error"]
    assert (await gw.client.get(f"/api/v1/status/{task_id}", headers=bearer(key))).status == 401
    assert (await keys_listed(gw))[made["id"]]["revoked_at"] is not None


async def test_wrong_key_is_refused(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    made = await create_key(gw)
    for wrong in ("pk_" + "A" * 43, made["key"][:-1] + ("B" if made["key"][-1] != "B" else "C"), "pk_short"):
        resp = await upload(gw, bearer(wrong))
        assert resp.status == 401, wrong
        assert "not valid" in (await resp.json())["error"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_revoke_holds_at_once_on_every_gateway(aiohttp_client: Any, tmp_path: Path,
                                                     redis_config: dict[str, Any], nodes: Any) -> None:
    a = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    b = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    await ready(a, nodes)
    await wait_until(lambda: b.app[GATEWAY].registry.serving(True), 5, "gateway b to see the node")
    made = await create_key(a)
    assert (await upload(b, bearer(made["key"]))).status == 200
    resp = await b.client.delete(f"/api/v1/admin/keys/{made['id']}", headers=admin(b))
    assert resp.status == 200
    for gw in (a, b):  # the very next request, on either gateway
        resp = await upload(gw, bearer(made["key"]))
        assert resp.status == 401 and "revoked" in (await resp.json())["error"]


async def test_a_quota_holds_across_gateways_under_concurrent_uploads(
        aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any], nodes: Any) -> None:
    a = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    b = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    await ready(a, nodes)
    await wait_until(lambda: b.app[GATEWAY].registry.serving(True), 5, "gateway b to see the node")
    made = await create_key(a, photos_per_day=3)
    answers = await asyncio.gather(*(upload((a, b)[i % 2], bearer(made["key"])) for i in range(8)))
    codes = sorted(r.status for r in answers)
    assert codes == [200] * 3 + [429] * 5, codes
    assert (await keys_listed(b))[made["id"]]["used_photos"] == 3


async def _database_text(gw: Gateway, backend: dict[str, Any], tmp_path: Path) -> bytes:
    """Every byte the backend stores: the SQLite files, or every Redis key's value."""
    if not backend:
        return b"".join(p.read_bytes() for p in (tmp_path / "data").glob("photogate.db*"))
    client = Redis.from_url(backend["storage.redis_url"])
    dump = []
    try:
        async for name in client.scan_iter(match=backend["storage.redis_prefix"] + "*"):
            dump.append(name + b"=" + repr(await _value(client, name)).encode())
    finally:
        await client.aclose()
    assert dump, "no Redis keys under the test's prefix"
    return b"\n".join(dump)


async def _value(client: Redis, name: bytes) -> Any:
    kind = (await client.type(name)).decode()
    read = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
            "list": lambda n: client.lrange(n, 0, -1), "zset": lambda n: client.zrange(n, 0, -1, withscores=True)}
    return await read[kind](name) if kind in read else kind


async def test_the_database_never_holds_a_usable_key(start_gateway: Start, nodes: Any, backend: dict[str, Any],
                                                     tmp_path: Path) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    made = await create_key(gw, photos_per_day=5)
    assert (await upload(gw, bearer(made["key"]))).status == 200
    stored = await _database_text(gw, backend, tmp_path)
    assert made["id"].encode() in stored  # the search does reach the records
    assert made["key"].encode() not in stored
    assert made["key"][12:].encode() not in stored  # nor its secret part


async def test_photo_quota_is_429_until_the_day_ends(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    clock = [LATE]
    set_clock(gw, clock)
    made = await create_key(gw, photos_per_day=2)
    for _ in range(2):
        assert (await upload(gw, bearer(made["key"]))).status == 200
    resp = await upload(gw, bearer(made["key"]))
    body = await resp.json()
    assert resp.status == 429, body
    assert body["success"] is False and body["error"] == "quota_exhausted"
    assert body["resets_at"] == "2026-03-11T00:00:00Z" and "2 photos a day" in body["message"]
    assert resp.headers["Retry-After"] == "60"
    listed = (await keys_listed(gw))[made["id"]]
    assert listed["used_photos"] == 2 and listed["resets_at"] == "2026-03-11T00:00:00Z"

    clock[0] = LATE + 61  # the next UTC day
    assert (await keys_listed(gw))[made["id"]]["used_photos"] == 0
    assert (await upload(gw, bearer(made["key"]))).status == 200
    assert (await keys_listed(gw))[made["id"]]["used_photos"] == 1


async def test_megapixel_quota_is_429_with_resets_at(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    set_clock(gw, [LATE])
    made = await create_key(gw, megapixels_per_day=0.005)  # one 64x48 photo is 0.003 MP
    assert (await upload(gw, bearer(made["key"]), image_bytes(64, 48))).status == 200
    resp = await upload(gw, bearer(made["key"]), image_bytes(64, 48))
    body = await resp.json()
    assert resp.status == 429 and body["error"] == "quota_exhausted", body
    assert body["resets_at"] == "2026-03-11T00:00:00Z" and "0.005 megapixels a day" in body["message"]
    # A smaller photo still fits what is left.
    assert (await upload(gw, bearer(made["key"]), image_bytes(20, 20))).status == 200
    assert (await keys_listed(gw))[made["id"]]["used_megapixels"] == pytest.approx(0.003472, abs=1e-3)


async def test_a_refused_upload_gives_its_quota_back(start_gateway: Start, nodes: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    made = await create_key(gw, photos_per_day=1)
    # Not an image: refused before anything is counted.
    assert (await upload(gw, bearer(made["key"]), b"not an image at all")).status in (400, 415)
    # The store refuses the record: the photo counted at accept is given back.
    store = gw.app[GATEWAY].store

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the store is away (test)")

    monkeypatch.setattr(store, "insert_task", refuse)
    assert (await upload(gw, bearer(made["key"]))).status == 503
    assert (await keys_listed(gw))[made["id"]]["used_photos"] == 0
    monkeypatch.undo()
    assert (await upload(gw, bearer(made["key"]))).status == 200
    assert (await upload(gw, bearer(made["key"]))).status == 429


async def test_owner_and_class_of_open_api_and_key_tasks(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway(**{"server.trusted_proxies": ["127.0.0.1/32", "::1/128"]})
    await ready(gw, nodes)
    resp = await upload(gw, {"X-Forwarded-For": "203.0.113.7"})
    open_task = (await resp.json())["task_id"]
    made = await create_key(gw, **{"class": "paid"})
    key_task = (await (await upload(gw, bearer(made["key"]))).json())["task_id"]
    assert {k: (await admin_task(gw, open_task))[k] for k in ("owner", "class")} == {
        "owner": "ip:203.0.113.7", "class": "free"}
    assert {k: (await admin_task(gw, key_task))[k] for k in ("owner", "class")} == {
        "owner": f"key:{made['id']}", "class": "paid"}
    resp = await gw.client.get("/api/v1/admin/tasks", headers=admin(gw))
    listing = {t["task_id"]: t for t in (await resp.json())["tasks"]}
    assert listing[open_task]["owner"] == "ip:203.0.113.7" and listing[key_task]["class"] == "paid"
    login = await gw.client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert login.status == 303
    dashboard = {t["task_id"]: t for t in (await (await gw.client.get("/dashboard/state")).json())["tasks"]}
    assert (dashboard[key_task]["owner"], dashboard[key_task]["class"]) == (f"key:{made['id']}", "paid")
    # The open API's tasks stay visible by their id, as before.
    assert (await gw.client.get(f"/api/v1/status/{open_task}")).status == 200
    # Metrics count by class, never by owner.
    text = await (await gw.client.get("/metrics", headers=admin(gw))).text()
    assert 'photogate_class_tasks_submitted_total{class="paid"} 1.0' in text
    assert 'photogate_class_tasks_submitted_total{class="free"} 1.0' in text
    assert "203.0.113.7" not in text and made["id"] not in text


async def test_require_key_makes_the_public_api_key_only(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway(**{"access.require_key": True})
    await ready(gw, nodes)
    resp = await upload(gw)
    body = await resp.json()
    assert resp.status == 401 and "Authorization: Bearer pk_" in body["error"]
    made = await create_key(gw)
    resp = await upload(gw, bearer(made["key"]))
    assert resp.status == 200
    task_id = (await resp.json())["task_id"]
    assert (await gw.client.get(f"/api/v1/status/{task_id}")).status == 401
    assert (await gw.client.get(f"/api/v1/status/{task_id}", headers=bearer(made["key"]))).status == 200


async def test_admin_key_requests_are_checked(start_gateway: Start) -> None:
    gw = await start_gateway()
    assert (await gw.client.get("/api/v1/admin/keys")).status == 401
    for bad in ({"name": ""}, {"name": "x", "class": "gold"}, {"name": "x", "photos_per_day": 0},
                {"name": "x", "megapixels_per_day": "lots"}):
        resp = await gw.client.post("/api/v1/admin/keys", json=bad, headers=admin(gw))
        assert resp.status == 400, bad
    made = await create_key(gw)
    assert made["class"] == "free"  # access.default_class
    assert (await gw.client.delete("/api/v1/admin/keys/pk_nosuchkey", headers=admin(gw))).status == 404


async def _cli(gw: Gateway, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {"WEBHOOK_SECRET": SECRET, "PHOTOGATE_ADMIN_TOKEN": ADMIN_TOKEN,
           "GATEWAY_URL": str(gw.client.make_url("")).rstrip("/")}
    code = await run(list(argv), stdout=out, env=env, stderr=err)
    return code, out.getvalue() + err.getvalue()


async def test_admin_cli_creates_lists_and_revokes_keys(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    code, out = await _cli(gw, "keys", "create", "batch script", "--class", "paid", "--photos-per-day", "10")
    assert code == 0, out
    key = re.search(r"key: (pk_\S+)", out)
    assert key is not None and "only time the key is shown" in out
    key_id = key.group(1)[:12]
    assert (await upload(gw, bearer(key.group(1)))).status == 200

    code, out = await _cli(gw, "keys", "list")
    assert code == 0 and key_id in out and "batch script" in out and "1/10" in out and "active" in out
    assert key.group(1) not in out
    code, out = await _cli(gw, "keys", "list", "--json")
    assert code == 0 and json.loads(out)["keys"][0]["used_photos"] == 1

    code, out = await _cli(gw, "keys", "revoke", key_id)
    assert code == 0 and f"revoked API key {key_id}" in out
    assert (await upload(gw, bearer(key.group(1)))).status == 401
    code, out = await _cli(gw, "keys", "list")
    assert "revoked" in out
    code, out = await _cli(gw, "keys", "revoke", "pk_nosuchkey")
    assert code == 1 and "no API key" in out


async def test_key_events_are_audited_and_no_log_line_holds_the_key(start_gateway: Start, nodes: Any) -> None:
    gw = await start_gateway()
    await ready(gw, nodes)
    with structlog.testing.capture_logs() as logs:
        made = await create_key(gw, photos_per_day=1)
        assert (await upload(gw, bearer(made["key"]))).status == 200
        assert (await upload(gw, bearer(made["key"]))).status == 429
        assert (await gw.client.delete(f"/api/v1/admin/keys/{made['id']}", headers=admin(gw))).status == 200
        assert (await upload(gw, bearer(made["key"]))).status == 401
    audits = [e for e in logs if e.get("event") == "audit"]
    assert [(e["action"], e["key_id"]) for e in audits] == [("key_created", made["id"]), ("key_revoked", made["id"])]
    assert audits[0]["name"] == "web shop" and audits[0]["photos_per_day"] == 1
    assert not [e for e in logs if made["key"] in repr(e) or made["key"][12:] in repr(e)]


class _SessionPolicy(OpenAccess):
    """A login policy whose one session token starts with pk_ (as a random token may)."""

    TOKEN = "pk_" + "s" * 40  # a WeChat session token is 43 characters, a key 46

    async def admit(self, request: web.Request) -> str | None:
        return "o-session-user" if request.headers.get("Authorization") == f"Bearer {self.TOKEN}" else None


async def test_a_session_token_that_starts_like_a_key_is_still_a_session() -> None:
    access = GatewayAccess(_SessionPolicy(), AccessConfig())
    request = make_mocked_request("GET", "/", headers={"Authorization": f"Bearer {_SessionPolicy.TOKEN}"})
    who = await access.admit(request, upload=True)
    assert (who.owner, who.priority_class, who.key) == ("o-session-user", "free", None)
    wrong = make_mocked_request("GET", "/", headers={"Authorization": "Bearer pk_" + "x" * 40})
    with pytest.raises(Unauthorized, match="not valid"):
        await access.admit(wrong)
