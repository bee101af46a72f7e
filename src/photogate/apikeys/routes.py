"""The admin API's API keys (``Authorization: Bearer <admin.token>``): create, list, revoke.

A key is shown once, in the answer that creates it; the audit log names its id, never the key.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..access import ADMISSION
from ..adminauth import require_admin
from ..audit import audit
from ..bodies import read_json
from ..errors import BadRequest, NotFound, ServiceUnavailable
from ..fields import parse_int, parse_number
from ..jsonbody import json_response
from ..keys import GATEWAY
from .protocol import KeyRecord
from .service import ApiKeys, iso

routes = web.RouteTableDef()
NAME_LIMIT = 100


def _keys(request: web.Request) -> ApiKeys:
    keys = request.app[ADMISSION].keys
    if keys is None:
        raise ServiceUnavailable("the API keys are not open yet; try again in a moment")
    return keys


def key_view(record: KeyRecord, keys: ApiKeys) -> dict[str, Any]:
    """A key as the admin API shows it: never the key, nor its hash."""
    photos, megapixels = record.usage(keys.today())
    return {"id": record.id, "name": record.name, "class": record.priority_class,
            "photos_per_day": record.photos_per_day, "megapixels_per_day": record.megapixels_per_day,
            "used_photos": photos, "used_megapixels": round(megapixels, 3), "resets_at": iso(keys.resets_at()),
            "created_at": iso(record.created_at),
            "revoked_at": None if record.revoked_at is None else iso(record.revoked_at)}


def _limit(body: dict[str, Any], name: str, *, whole: bool) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if whole:
        return parse_int(value, name, 1, 10**9)
    return parse_number(value, name, 0.001, 1e9, " such as 500")


@routes.post("/api/v1/admin/keys")
async def create_key(request: web.Request) -> web.Response:
    ip = require_admin(request)
    body = await read_json(request, 4096, allow_empty=False)
    classes = request.app[GATEWAY].config.access.classes
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_LIMIT:
        raise BadRequest(f'name: who the key is for, 1 to {NAME_LIMIT} characters, e.g. {{"name": "web shop"}}')
    klass = body.get("class") or request.app[GATEWAY].config.access.default_class
    if klass not in classes:
        raise BadRequest(f"class: one of access.classes ({', '.join(classes)}), got {klass!r}")
    photos, megapixels = _limit(body, "photos_per_day", whole=True), _limit(body, "megapixels_per_day", whole=False)
    keys = _keys(request)
    key, record = await keys.create(name.strip(), klass, photos, megapixels)
    audit("key_created", who="admin", ip=ip, key_id=record.id, name=record.name, priority_class=klass,
          photos_per_day=photos, megapixels_per_day=megapixels)
    view = key_view(record, keys)
    del view["used_photos"], view["used_megapixels"], view["resets_at"], view["revoked_at"]
    return json_response({"success": True, "key": key, **view}, status=201)


@routes.get("/api/v1/admin/keys")
async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    keys = _keys(request)
    return json_response({"success": True, "keys": [key_view(r, keys) for r in await keys.list()]})


@routes.delete("/api/v1/admin/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    ip = require_admin(request)
    key_id = request.match_info["key_id"]
    keys = _keys(request)
    if not await keys.revoke(key_id):
        record = await keys.records.get(key_id) if len(key_id) <= 64 else None
        if record is None:
            raise NotFound(f"no API key {key_id[:64]!r}: photogate-admin keys list shows the ids")
        return json_response({"success": True, "revoked": key_id, "message": "it was already revoked"})
    audit("key_revoked", who="admin", ip=ip, key_id=key_id)
    return json_response({"success": True, "revoked": key_id})
