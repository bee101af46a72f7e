"""The gateway's tasks: tasks (recent, newest first), task (one task's full record)."""

from __future__ import annotations

import argparse
import json

from ..context import Context
from ..output import duration, short, size, table, when

TASK_STATUSES = ("queued", "processing", "completed", "failed")


async def cmd_tasks(ctx: Context, args: argparse.Namespace) -> None:
    params = {"limit": str(args.limit)}
    if args.status:
        params["status"] = args.status
    data = await ctx.client.call("GET", "/api/v1/admin/tasks/recent", auth="admin", params=params)
    tasks = data.get("tasks") or []
    rows = [
        (t.get("task_id"), t.get("status"), t.get("server_id"), t.get("attempts"),
         f"{t.get('width')}x{t.get('height')}", when(t.get("created_at")), short(t.get("error"), 60))
        for t in tasks
    ]
    text = table(("TASK", "STATUS", "SERVER", "TRIES", "SIZE", "CREATED", "ERROR"), rows) if rows else "no tasks"
    ctx.emit(data, text)


async def cmd_task(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("GET", f"/api/v1/admin/tasks/{args.task_id}", auth="admin")
    t = data.get("task") or {}
    node = t.get("node")
    server = t.get("server_id")
    if node:
        server = f"{node.get('server_id')} ({node.get('address')}, {node.get('status')})"
    elif server:
        server = f"{server} (no longer registered)"
    timings = t.get("timings") or {}
    result = None
    if t.get("result_mime"):
        result = f"{t.get('result_mime')}, {size(t.get('result_bytes'))}: {t.get('result_url')}"
    pairs = [
        ("task", t.get("task_id")),
        ("status", f"{t.get('status')} ({t.get('message')})"),
        ("server", server),
        ("attempts", t.get("attempts")),
        ("input", f"{t.get('input_mime')}, {t.get('width')}x{t.get('height')}, {size(t.get('input_bytes'))}"),
        ("params", json.dumps(t.get("params") or {}, ensure_ascii=False)),
        ("result", result),
        ("error", t.get("last_error") or t.get("error")),
        ("created", when(t.get("created_at"))),
        ("started", when(t.get("started_at"))),
        ("finished", when(t.get("finished_at"))),
        ("timings", f"queued {duration(timings.get('queued_s'))}, processing {duration(timings.get('processing_s'))}, "
                    f"total {duration(timings.get('total_s'))}"),
    ]
    if t.get("owner"):
        pairs.append(("owner", t["owner"]))
    ctx.emit(data, "\n".join(f"{k:<9} {'—' if v is None else v}" for k, v in pairs))
