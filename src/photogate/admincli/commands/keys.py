"""The API keys: create (the key is printed once), list, revoke."""

from __future__ import annotations

import argparse
from typing import Any

from ..context import Context
from ..output import table


def _limit(value: Any, unit: str) -> str:
    return "unlimited" if value is None else f"{value:g} {unit}/day"


async def cmd_keys_create(ctx: Context, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "photos_per_day": args.photos_per_day,
                            "megapixels_per_day": args.megapixels_per_day}
    if args.klass:
        body["class"] = args.klass
    data = await ctx.client.call("POST", "/api/v1/admin/keys", auth="admin", json=body)
    ctx.emit(data, "\n".join([
        f"created API key {data.get('id')} for {data.get('name')!r}, class {data.get('class')}, "
        f"{_limit(data.get('photos_per_day'), 'photos')}, {_limit(data.get('megapixels_per_day'), 'MP')}",
        f"key: {data.get('key')}",
        "this is the only time the key is shown: give it to its user now "
        "(they send it as Authorization: Bearer <key>)",
    ]))


async def cmd_keys_list(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("GET", "/api/v1/admin/keys", auth="admin")
    keys = data.get("keys") or []
    rows = [
        (k.get("id"), k.get("name"), k.get("class"),
         f"{k.get('used_photos')}/{'-' if k.get('photos_per_day') is None else k.get('photos_per_day')}",
         f"{k.get('used_megapixels')}/{'-' if k.get('megapixels_per_day') is None else k.get('megapixels_per_day')}",
         k.get("created_at"), "revoked " + str(k.get("revoked_at")) if k.get("revoked_at") else "active")
        for k in keys
    ]
    text = table(("ID", "NAME", "CLASS", "PHOTOS TODAY", "MP TODAY", "CREATED", "STATE"), rows) if rows else (
        "no API keys: photogate-admin keys create NAME")
    if keys:
        text += f"\nquotas reset at {keys[0].get('resets_at')}"
    ctx.emit(data, text)


async def cmd_keys_revoke(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("DELETE", f"/api/v1/admin/keys/{args.key_id}", auth="admin")
    ctx.emit(data, f"revoked API key {data.get('revoked')}: every gateway refuses it from now on"
             + (f" ({data['message']})" if data.get("message") else ""))
