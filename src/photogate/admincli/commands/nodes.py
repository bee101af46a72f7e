"""The GPU servers: register, unregister, list, drain, undrain, remove."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..context import Context
from ..errors import UsageError
from ..output import ago, masked, offline, on_off, plural, table


async def cmd_register(ctx: Context, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"ip": args.ip, "port": args.port, "secret": ctx.client.secret()}
    for key, value in (("slots", args.slots), ("weight", args.weight)):
        if value is not None:
            body[key] = value
    data = masked(await ctx.client.call("POST", "/webhook/register", json=body))  # node_token
    ctx.emit(data, f"registered {data.get('server_id')} at {data.get('ip')}:{data.get('port')} "
                   f"({data.get('message', '')})")


async def cmd_unregister(ctx: Context, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"secret": ctx.client.secret()}
    if args.server_id:
        body["server_id"] = args.server_id
    if args.ip is not None or args.port is not None:
        if args.ip is None or args.port is None:
            raise UsageError("unregister: give both --ip and --port (or --server-id)")
        body.update(ip=args.ip, port=args.port)
    if len(body) == 1:
        raise UsageError("unregister: give --ip and --port, or --server-id")
    data = await ctx.client.call("POST", "/webhook/unregister", json=body)
    ctx.emit(data, f"unregistered {data.get('server_id')} at {data.get('ip')}:{data.get('port')} "
                   f"({data.get('message', '')})")


async def cmd_list(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("GET", "/webhook/servers", auth="secret")
    fleet = data.get("data") or {}
    servers = fleet.get("servers") or []
    now = time.time()
    rows = [
        (s.get("server_id"), s.get("address") or f"{s.get('ip')}:{s.get('port')}", s.get("status"),
         f"{s.get('busy', 0)}/{s.get('slots', 0)}", s.get("weight"), ago(s.get("last_check"), now),
         s.get("consecutive_failures", 0))
        for s in servers
    ]
    lines = [table(("ID", "ADDRESS", "HEALTH", "BUSY", "WEIGHT", "LAST CHECK", "FAILURES"), rows)] if rows else [
        "no GPU servers registered"]
    lines += [f"{s.get('server_id')}: last error: {s['last_error']}" for s in servers if s.get("last_error")]
    lines.append(
        f"{plural(fleet.get('total_servers', len(servers)), 'server')}: {fleet.get('healthy_servers', 0)} healthy, "
        f"{fleet.get('unhealthy_servers', 0)} unhealthy{offline(fleet.get('offline_servers'))}; "
        f"strategy {fleet.get('strategy', '?')}, "
        f"multi-backend {on_off(fleet.get('multi_backend'))}, "
        f"health checks {'running' if fleet.get('health_check_running') else 'stopped'}"
    )
    ctx.emit(data, "\n".join(lines))


async def cmd_drain(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("POST", f"/api/v1/admin/servers/{args.server_id}/drain", auth="admin")
    busy = (data.get("server") or {}).get("busy", 0)
    ctx.emit(data, f"{args.server_id} is draining: it gets no new work; {plural(busy, 'task')} in flight will finish")


async def cmd_undrain(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("POST", f"/api/v1/admin/servers/{args.server_id}/undrain", auth="admin")
    ctx.emit(data, f"{args.server_id} takes new work again ({(data.get('server') or {}).get('status')})")


async def cmd_remove(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("DELETE", f"/api/v1/admin/servers/{args.server_id}", auth="admin")
    ctx.emit(data, f"removed {data.get('server_id', args.server_id)} from the registry "
                   "(if it registers again it gets a new id)")
