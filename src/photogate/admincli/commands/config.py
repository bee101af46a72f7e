"""The gateway's configuration: config show/set/reload/reset, strategy, multi-backend."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..context import Context
from ..errors import Refused, UsageError
from ..output import flatten, masked, on_off, scalar, when

#: ``config set`` keys the gateway can change without a restart, and how.
RUNTIME_KEYS = ("balancer.strategy", "balancer.options", "multi_backend.enabled")
TRUE, FALSE = ("on", "true", "yes", "1", "enabled"), ("off", "false", "no", "0", "disabled")


def json_or_text(raw: str) -> Any:
    """``3`` → 3, ``{"GPU-001": 3}`` → a dict, ``fast`` → "fast"."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


async def _config(ctx: Context) -> dict[str, Any]:
    """The full configuration with the admin token; without one, the public view clients get."""
    if ctx.config.admin_token:
        try:
            return await ctx.client.call("GET", "/api/v1/admin/config", auth="admin")
        except Refused as exc:
            if exc.data.get("http_status") != 404:
                raise
            # A gateway from before the public/admin split: its /api/v1/config is the full one.
    return await ctx.client.call("GET", "/api/v1/config")


def _runtime_note(key: str, runtime: Mapping[str, Any]) -> str:
    """A note after a value that a runtime change set (a value without one is the file's)."""
    entry = runtime.get(key)
    if not isinstance(entry, Mapping) or entry.get("source") != "runtime":
        return ""
    return (f"  # runtime change by {entry.get('who') or 'unknown'} at {when(entry.get('changed_at'))}; "
            f"the file says {scalar(entry.get('file_value'))} (undo: photogate-admin config reset {key})")


def _sources(runtime: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """Where each runtime key's value comes from, as comment lines."""
    return [f"# {k}: {'runtime change' if (runtime.get(k) or {}).get('source') == 'runtime' else 'config file'}"
            for k in keys if k in runtime]


async def cmd_config_show(ctx: Context, args: argparse.Namespace) -> None:
    data = masked(await _config(ctx))
    runtime = data.pop("runtime", None) or {}  # the admin view: where each runtime value comes from
    key = getattr(args, "key", None)  # absent for a bare `config`
    items = flatten(data)
    if key:
        items = [(k, v) for k, v in items if k == key or k.startswith(key + ".")]
        if not items:
            raise UsageError(f"config show: no key {key!r}; try `photogate-admin config show`")
        data = {k: v for k, v in items}
    elif runtime:  # --json: the whole view keeps the sources; one key's view keeps its flat shape
        data["runtime"] = runtime
    lines = [f"{k} = {scalar(v)}{_runtime_note(k, runtime)}" for k, v in items]
    if key:
        lines += _sources(runtime, [k for k in RUNTIME_KEYS if k == key or k.startswith(key + ".")])
    else:
        lines.append(f"# changeable at runtime with `photogate-admin config set`: {', '.join(RUNTIME_KEYS)}; "
                     "a runtime change wins over the file (and a reload) until `photogate-admin config reset KEY`")
        lines += _sources(runtime, RUNTIME_KEYS)
    ctx.emit(data, "\n".join(lines))


async def cmd_config_set(ctx: Context, args: argparse.Namespace) -> None:
    key, value = args.key, args.value
    if key == "balancer.strategy":
        await _set_strategy(ctx, value, {})
    elif key == "balancer.options":
        options = json_or_text(value)
        if not isinstance(options, dict):
            raise UsageError("config set balancer.options: expected a JSON object such as "
                             "'{\"weights\": {\"GPU-001\": 3}}'")
        current = await ctx.client.call("GET", "/api/v1/config")
        await _set_strategy(ctx, (current.get("balancer") or {}).get("strategy") or "round_robin", options)
    elif key == "multi_backend.enabled":
        await _set_multi_backend(ctx, _bool(key, value))
    else:
        raise UsageError(
            f"config set: {key} is not changeable at runtime; edit config.yaml and send SIGHUP to the gateway "
            f"(or run `photogate-admin config reload`). Changeable now: {', '.join(RUNTIME_KEYS)}",
            key=key,
        )


def _bool(key: str, value: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise UsageError(f"{key}: expected on or off (true/false), got {value!r}")


async def cmd_config_reload(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("POST", "/api/v1/config/reload", auth="admin")
    ctx.emit(data, f"config reloaded: strategy {data.get('strategy')}, "
                   f"multi-backend {on_off(data.get('multi_backend'))}")


async def cmd_config_reset(ctx: Context, args: argparse.Namespace) -> None:
    if args.key not in RUNTIME_KEYS:
        raise UsageError(f"config reset: {args.key!r} is not a runtime setting; runtime settings: "
                         f"{', '.join(RUNTIME_KEYS)}", key=args.key)
    data = await ctx.client.call("POST", "/api/v1/config/reset", auth="admin", json={"key": args.key})
    ctx.emit(data, f"{data.get('message')}; now strategy {data.get('strategy')}, "
                   f"multi-backend {on_off(data.get('multi_backend'))}")


async def cmd_strategy(ctx: Context, args: argparse.Namespace) -> None:
    options = dict(args.option)
    if args.name:
        await _set_strategy(ctx, args.name, options)
        return
    if options:
        raise UsageError("strategy: --option needs a strategy NAME (e.g. strategy weighted -o weights='{...}')")
    balancer = (await _config(ctx)).get("balancer") or {}
    text = f"strategy: {balancer.get('strategy')}"
    if balancer.get("options"):
        text += f"\noptions: {json.dumps(balancer['options'], ensure_ascii=False)}"
    ctx.emit({"strategy": balancer.get("strategy"), "options": balancer.get("options") or {}}, text)


async def _set_strategy(ctx: Context, name: str, options: dict[str, Any]) -> None:
    data = await ctx.client.call("POST", "/api/v1/config/strategy", auth="admin",
                                 json={"strategy": name, "options": options})
    text = f"strategy is now {data.get('strategy')}"
    if data.get("options"):
        text += f" with options {json.dumps(data['options'], ensure_ascii=False)}"
    ctx.emit(data, text + "; work in flight is unaffected")


async def cmd_multi_backend(ctx: Context, args: argparse.Namespace) -> None:
    if args.state is not None:
        await _set_multi_backend(ctx, args.state == "on")
        return
    enabled = bool(((await ctx.client.call("GET", "/api/v1/config")).get("multi_backend") or {}).get("enabled"))
    ctx.emit({"multi_backend": enabled}, f"multi-backend {on_off(enabled)}")


async def _set_multi_backend(ctx: Context, enabled: bool) -> None:
    data = await ctx.client.call("POST", "/api/v1/config/multi-backend", auth="admin", json={"enabled": enabled})
    detail = "work goes to every healthy server" if enabled else "all work goes to one primary server"
    ctx.emit(data, f"multi-backend {on_off(data.get('multi_backend'))}: {detail}")
