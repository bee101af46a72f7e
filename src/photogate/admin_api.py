"""The admin API (``Authorization: Bearer <admin.token>``): config changes, fleet and tasks."""

from __future__ import annotations

from aiohttp import web

from . import fleetops, runtime
from .adminauth import require_admin
from .balancing import StrategyError
from .bodies import read_json
from .errors import BadRequest, NotFound
from .fields import parse_int
from .jsonbody import json_response
from .keys import GATEWAY
from .models import TaskStatus
from .taskview import TASK_ID, status_body, timings, whose

routes = web.RouteTableDef()
#: Admin JSON bodies (strategy options can name many nodes).
ADMIN_JSON_LIMIT = 64 * 1024


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
    require_admin(request)
    gw = request.app[GATEWAY]
    data = gw.config.public_dict()
    data["balancer"] = {"strategy": gw.strategy_name, "options": gw.strategy_options}
    data["multi_backend"] = {"enabled": gw.multi_backend}
    data["health_check"]["interval"] = gw.monitor.interval
    # Where each runtime key's value comes from: the file, or a runtime change kept in the store.
    data["runtime"] = gw.settings.describe()
    return json_response(data)


@routes.post("/api/v1/config/multi-backend")
async def multi_backend(request: web.Request) -> web.Response:
    ip = require_admin(request)
    body = await read_json(request, ADMIN_JSON_LIMIT)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise BadRequest('expected {"enabled": true} or {"enabled": false}')
    await request.app[GATEWAY].set_multi_backend(enabled, who="admin", ip=ip)
    return json_response({"success": True, "multi_backend": enabled,
                              "message": f"multi-backend mode {'on' if enabled else 'off'}"})


@routes.post("/api/v1/config/strategy")
async def strategy(request: web.Request) -> web.Response:
    ip = require_admin(request)
    body = await read_json(request, ADMIN_JSON_LIMIT)
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
    ip = require_admin(request)
    gw = request.app[GATEWAY]
    try:
        gw.reload_config(who="admin", ip=ip)
    except (ValueError, StrategyError) as exc:
        raise BadRequest(f"config not reloaded: {exc}") from None
    return json_response({"success": True, "strategy": gw.strategy_name, "multi_backend": gw.multi_backend})


@routes.post("/api/v1/config/reset")
async def reset(request: web.Request) -> web.Response:
    """Drop a runtime change (``{"key": "balancer.strategy"}``): the config file's value applies again."""
    ip = require_admin(request)
    key = (await read_json(request, ADMIN_JSON_LIMIT)).get("key")
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


async def _set_draining(request: web.Request, draining: bool) -> web.Response:
    ip = require_admin(request)
    node = await fleetops.set_draining(request.app[GATEWAY].registry, request.match_info["server_id"], draining, ip=ip)
    return json_response({"success": True, "server": node.public()})


@routes.post("/api/v1/admin/servers/{server_id}/drain")
async def drain(request: web.Request) -> web.Response:
    return await _set_draining(request, True)


@routes.post("/api/v1/admin/servers/{server_id}/undrain")
async def undrain(request: web.Request) -> web.Response:
    return await _set_draining(request, False)


@routes.delete("/api/v1/admin/servers/{server_id}")
async def remove(request: web.Request) -> web.Response:
    ip = require_admin(request)
    node = await fleetops.remove(request.app[GATEWAY].registry, request.match_info["server_id"], ip=ip)
    return json_response({"success": True, "server_id": node.server_id})


async def _task_listing(request: web.Request, *, newest_first: bool) -> web.Response:
    require_admin(request)
    wanted = request.query.get("status")
    try:
        statuses = [TaskStatus(wanted)] if wanted else list(TaskStatus)
    except ValueError:
        raise BadRequest(f"status: one of {', '.join(s.value for s in TaskStatus)}") from None
    limit = parse_int(request.query.get("limit", "100"), "limit", 1, 10_000)
    gw = request.app[GATEWAY]
    found = await gw.store.list_tasks(statuses, limit, newest_first=newest_first)
    estimate = gw.dispatcher.estimator.estimate
    return json_response({"success": True, "tasks": [status_body(t, estimate(t)) | whose(t) for t in found]})



@routes.get("/api/v1/admin/tasks")
async def tasks(request: web.Request) -> web.Response:
    """Tasks oldest first (queue order)."""
    return await _task_listing(request, newest_first=False)


@routes.get("/api/v1/admin/tasks/recent")
async def recent_tasks(request: web.Request) -> web.Response:
    """Tasks newest first (what an operator looking into a complaint wants)."""
    return await _task_listing(request, newest_first=True)


@routes.get("/api/v1/admin/tasks/{task_id}")
async def task_detail(request: web.Request) -> web.Response:
    """One task's full record: parameters, node, attempts, last error, timings."""
    require_admin(request)
    gw = request.app[GATEWAY]
    task_id = request.match_info["task_id"]
    task = await gw.store.get_task(task_id) if TASK_ID.match(task_id) else None
    if task is None:
        raise NotFound(f"no task {task_id[:64]} (tasks expire after storage.task_ttl)")
    node = gw.registry.get(task.server_id) if task.server_id else None
    body = status_body(task, gw.dispatcher.estimator.estimate(task))
    body.update({
        "last_error": task.error,
        "params": task.params,
        "input_mime": task.input_mime,
        "input_bytes": task.input_bytes,
        "megapixels": round(task.megapixels, 3),
        "result_mime": task.result_mime,
        "result_bytes": task.result_bytes,
        **whose(task),
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "timings": timings(task),
        "node": None if node is None else {
            "server_id": node.server_id, "address": node.record.address,
            "status": node.public()["status"],
        },
    })
    return json_response({"success": True, "task": body})
