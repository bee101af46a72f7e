"""The admin API (``Authorization: Bearer <admin.token>``): config changes, fleet and tasks."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import runtime
from .api import TASK_ID, _status_body
from .audit import audit
from .balancing import StrategyError
from .bodies import read_json
from .errors import BadRequest, Forbidden, NotFound, Unauthorized
from .fields import parse_int
from .jsonbody import json_response
from .keys import GATEWAY
from .models import TaskStatus
from .netutil import bearer, client_ip, credential_refused, same_secret

routes = web.RouteTableDef()


def _admin(request: web.Request) -> str:
    """Check the admin token; return the caller's address for the audit log."""
    gw = request.app[GATEWAY]
    ip = client_ip(request, gw.config.server.trusted_proxies)
    if not gw.config.admin.token:
        raise Forbidden("the admin API is disabled: set admin.token or PHOTOGATE_ADMIN_TOKEN")
    token = bearer(request)
    if token is None:
        credential_refused(request)
        audit("admin_refused", who="anonymous", ip=ip, reason="missing token", path=request.path)
        raise Unauthorized("admin token required (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"})
    if not same_secret(token, gw.config.admin.token):
        credential_refused(request)
        audit("admin_refused", who="anonymous", ip=ip, reason="wrong token", path=request.path)
        raise Forbidden("wrong admin token")
    return ip


@routes.get("/api/v1/config")
async def client_config(request: web.Request) -> web.Response:
    """Public: what a client needs. It never looks at credentials (a mini program sends its
    WeChat session as a bearer), so it is no oracle for the admin token."""
    gw = request.app[GATEWAY]
    data = gw.config.client_dict()
    data["balancer"] = {"strategy": gw.strategy_name}
    data["multi_backend"] = {"enabled": gw.multi_backend}
    return json_response(data)


@routes.get("/api/v1/admin/config")
async def config(request: web.Request) -> web.Response:
    """The effective configuration, secrets masked: paths, networks, proxies and key files
    are the operator's business."""
    _admin(request)
    gw = request.app[GATEWAY]
    data = gw.config.public_dict()
    data["balancer"] = {"strategy": gw.strategy_name, "options": gw.strategy_options}
    data["multi_backend"] = {"enabled": gw.multi_backend}
    data["health_check"]["interval"] = gw.monitor.interval
    # Where each runtime key's value comes from: the file, or a runtime change kept in the store.
    data["runtime"] = gw.settings.describe()
    return json_response(data)


async def _json(request: web.Request) -> dict[str, Any]:
    return await read_json(request, 64 * 1024, empty={})


@routes.post("/api/v1/config/multi-backend")
async def multi_backend(request: web.Request) -> web.Response:
    ip = _admin(request)
    body = await _json(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise BadRequest('expected {"enabled": true} or {"enabled": false}')
    await request.app[GATEWAY].set_multi_backend(enabled, who="admin", ip=ip)
    return json_response({"success": True, "multi_backend": enabled,
                              "message": f"multi-backend mode {'on' if enabled else 'off'}"})


@routes.post("/api/v1/config/strategy")
async def strategy(request: web.Request) -> web.Response:
    ip = _admin(request)
    body = await _json(request)
    name, options = body.get("strategy"), body.get("options") or {}
    if not isinstance(name, str) or not name:
        raise BadRequest('expected {"strategy": "least_busy", "options": {...}}')
    if not isinstance(options, dict):
        raise BadRequest("options: expected a JSON object")
    try:
        await request.app[GATEWAY].set_strategy(name, options, who="admin", ip=ip)
    except StrategyError as exc:
        raise BadRequest(str(exc)) from None
    return json_response({"success": True, "strategy": name, "options": options})


@routes.post("/api/v1/config/reload")
async def reload(request: web.Request) -> web.Response:
    ip = _admin(request)
    gw = request.app[GATEWAY]
    try:
        gw.reload_config(who="admin", ip=ip)
    except (ValueError, StrategyError) as exc:
        raise BadRequest(f"config not reloaded: {exc}") from None
    return json_response({"success": True, "strategy": gw.strategy_name, "multi_backend": gw.multi_backend})


@routes.post("/api/v1/config/reset")
async def reset(request: web.Request) -> web.Response:
    """Drop a runtime change (``{"key": "balancer.strategy"}``): the config file's value applies again."""
    ip = _admin(request)
    key = (await _json(request)).get("key")
    if not isinstance(key, str) or key not in runtime.KEYS:
        raise BadRequest(runtime.unknown_key(key) if isinstance(key, str) else
                         f'expected {{"key": "..."}}, one of {", ".join(runtime.KEYS)}')
    gw = request.app[GATEWAY]
    dropped = await gw.reset_setting(key, who="admin", ip=ip)
    message = (f"runtime change of {', '.join(dropped)} dropped: the config file's value applies" if dropped
               else f"{key} has no runtime change: it already comes from the config file")
    return json_response({"success": True, "key": key, "reset": dropped, "message": message,
                          "strategy": gw.strategy_name, "options": gw.strategy_options,
                          "multi_backend": gw.multi_backend, "runtime": gw.settings.describe()})


def _node_or_404(request: web.Request):  # type: ignore[no-untyped-def]
    state = request.app[GATEWAY].registry.get(request.match_info["server_id"])
    if state is None:
        raise NotFound(f"no server {request.match_info['server_id']}")
    return state


@routes.post("/api/v1/admin/servers/{server_id}/drain")
async def drain(request: web.Request) -> web.Response:
    ip = _admin(request)
    state = _node_or_404(request)
    await request.app[GATEWAY].registry.set_draining(state.server_id, True)
    audit("node_drained", who="admin", ip=ip, server_id=state.server_id)
    return json_response({"success": True, "server": state.public()})


@routes.post("/api/v1/admin/servers/{server_id}/undrain")
async def undrain(request: web.Request) -> web.Response:
    ip = _admin(request)
    state = _node_or_404(request)
    await request.app[GATEWAY].registry.set_draining(state.server_id, False)
    audit("node_undrained", who="admin", ip=ip, server_id=state.server_id)
    return json_response({"success": True, "server": state.public()})


@routes.delete("/api/v1/admin/servers/{server_id}")
async def remove(request: web.Request) -> web.Response:
    ip = _admin(request)
    state = _node_or_404(request)
    await request.app[GATEWAY].registry.remove(state.server_id)
    audit("node_removed", who="admin", ip=ip, server_id=state.server_id)
    return json_response({"success": True, "server_id": state.server_id})


async def _task_listing(request: web.Request, *, newest_first: bool) -> web.Response:
    _admin(request)
    wanted = request.query.get("status")
    try:
        statuses = [TaskStatus(wanted)] if wanted else list(TaskStatus)
    except ValueError:
        raise BadRequest(f"status: one of {', '.join(s.value for s in TaskStatus)}") from None
    limit = parse_int(request.query.get("limit", "100"), "limit", 1, 10_000)
    gw = request.app[GATEWAY]
    found = await gw.store.list_tasks(statuses, limit, newest_first=newest_first)
    estimate = gw.dispatcher.estimator.estimate
    return json_response({"success": True, "tasks": [_status_body(t, estimate(t)) for t in found]})


@routes.get("/api/v1/admin/tasks")
async def tasks(request: web.Request) -> web.Response:
    """Tasks oldest first (queue order)."""
    return await _task_listing(request, newest_first=False)


@routes.get("/api/v1/admin/tasks/recent")
async def recent_tasks(request: web.Request) -> web.Response:
    """Tasks newest first (what an operator looking into a complaint wants)."""
    return await _task_listing(request, newest_first=True)


def _seconds(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None else None


@routes.get("/api/v1/admin/tasks/{task_id}")
async def task_detail(request: web.Request) -> web.Response:
    """One task's full record: parameters, node, attempts, last error, timings."""
    _admin(request)
    gw = request.app[GATEWAY]
    task_id = request.match_info["task_id"]
    task = await gw.store.get_task(task_id) if TASK_ID.match(task_id) else None
    if task is None:
        raise NotFound(f"no task {task_id[:64]} (tasks expire after storage.task_ttl)")
    node = gw.registry.get(task.server_id) if task.server_id else None
    body = _status_body(task, gw.dispatcher.estimator.estimate(task))
    body.update({
        "last_error": task.error,
        "params": task.params,
        "input_mime": task.input_mime,
        "input_bytes": task.input_bytes,
        "megapixels": round(task.megapixels, 3),
        "result_mime": task.result_mime,
        "result_bytes": task.result_bytes,
        "owner": task.owner,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "timings": {
            "queued_s": _seconds(task.created_at, task.started_at),
            "processing_s": _seconds(task.started_at, task.finished_at),
            "total_s": _seconds(task.created_at, task.finished_at),
        },
        "node": None if node is None else {
            "server_id": node.server_id, "address": node.record.address,
            "status": node.public()["status"],
        },
    })
    return json_response({"success": True, "task": body})
