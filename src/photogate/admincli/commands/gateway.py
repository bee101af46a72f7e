"""The gateway itself: status (health and a fleet summary), info (version and endpoints)."""

from __future__ import annotations

import argparse

from ..context import Context
from ..output import duration, offline, on_off, plural


async def cmd_status(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("GET", "/api/v1/health")
    fleet = data.get("fleet") or {}
    tasks = data.get("tasks") or {}
    lines = [
        f"gateway   {ctx.config.gateway}  {data.get('status')}  "
        f"(photogate {data.get('version')}, up {duration(data.get('uptime'))})",
        f"fleet     {plural(fleet.get('total', 0), 'server')}: {fleet.get('healthy', 0)} healthy, "
        f"{fleet.get('unhealthy', 0)} unhealthy{offline(fleet.get('offline'))}, "
        f"{fleet.get('draining', 0)} draining; "
        f"{fleet.get('busy', 0)}/{fleet.get('slots', 0)} slots busy",
        f"balancing {fleet.get('strategy')}, multi-backend {on_off(fleet.get('multi_backend'))}",
        f"queue     {fleet.get('queued', 0)} queued, {fleet.get('in_flight', 0)} in flight",
        "tasks     " + ", ".join(f"{n} {s}" for s, n in tasks.items()),
    ]
    if data.get("status") != "healthy":
        lines.append(f"note      {data.get('message')}")
    ctx.emit(data, "\n".join(lines))


async def cmd_info(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("GET", "/api/v1/info")
    fleet = data.get("fleet") or {}
    lines = [
        f"{data.get('name')} {data.get('version')}: {data.get('description')}",
        f"gateway   {ctx.config.gateway}",
        f"strategy  {data.get('strategy')}, multi-backend {on_off(fleet.get('multi_backend'))}",
        f"fleet     {plural(fleet.get('total', 0), 'server')}, {fleet.get('healthy', 0)} healthy",
        "endpoints",
        *(f"  {e}" for e in data.get("endpoints") or []),
    ]
    ctx.emit(data, "\n".join(lines))
