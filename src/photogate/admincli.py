"""``photogate-admin``: the operator's CLI over photogate's HTTP API.

httpie style: :func:`run` is the whole program, a coroutine that tests await in-process
with their own ``stdout`` and ``env``; :func:`main` (the console script) wraps it in
``asyncio.run``. One ``ClientSession`` per invocation, no cookie jar, redirects never
followed (a request may carry the webhook secret or the admin token).

Exit codes (:class:`ExitStatus`): 0 ok, 1 the gateway said no, 2 usage, 3 the gateway
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import mimetypes
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import aiohttp

from . import __version__
from .config import secret_names

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
#: ``config set`` keys the gateway can change without a restart, and how.
RUNTIME_KEYS = ("balancer.strategy", "balancer.options", "multi_backend.enabled")
TASK_STATUSES = ("queued", "processing", "completed", "failed")
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
TRUE, FALSE = ("on", "true", "yes", "1", "enabled"), ("off", "false", "no", "0", "disabled")


class ExitStatus(enum.IntEnum):
    OK = 0
    REFUSED = 1  # the gateway answered with an error
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: a message for the operator, an exit status, a JSON form."""

    status = ExitStatus.REFUSED

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class UsageError(CliError):
    status = ExitStatus.USAGE


class Refused(CliError):
    status = ExitStatus.REFUSED


class Unreachable(CliError):
    status = ExitStatus.UNREACHABLE


# -- argument parsing -------------------------------------------------------------------------


class _ParserExit(Exception):
    def __init__(self, status: int, out: str = "", err: str = "") -> None:
        super().__init__(status)
        self.status, self.out, self.err = status, out, err


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing to sys.stdout and exiting,
    so that ``run`` can be awaited in-process with its own streams."""

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        if message:
            self.__dict__.setdefault("_printed", []).append(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _ParserExit(status, "".join(self.__dict__.get("_printed", [])), message or "")

    def error(self, message: str) -> NoReturn:
        raise _ParserExit(ExitStatus.USAGE, err=f"{self.format_usage()}{self.prog}: error: {message}\n")


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {value!r}")
    return int(value)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 10_000:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 10000, got {value!r}")
    return int(value)


def _option(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), _json_or_text(raw)


def _json_or_text(raw: str) -> Any:
    """``3`` → 3, ``{"GPU-001": 3}`` → a dict, ``fast`` → "fast"."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_server_id(value: str) -> str:
    """``GPU-003``, ``gpu-3`` and ``3`` all name GPU-003."""
    text = value.strip().upper()
    number = text[4:] if text.startswith("GPU-") else text
    if number.isdigit():
        return f"GPU-{int(number):03d}"
    raise argparse.ArgumentTypeError(f"expected a server id such as GPU-003, got {value!r}")


def parse_task_id(value: str) -> str:
    text = value.strip().lower()
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    raise argparse.ArgumentTypeError(f"expected a 32-character task id, got {value[:40]!r}")


def build_parser() -> argparse.ArgumentParser:
    # Global options live in a parent parser added to every subparser, with SUPPRESS
    # defaults, so they work before and after the command (`list --gateway URL` as the
    # seed's client wrote it) and a subparser's default never hides a value given earlier.
    common = _Parser(add_help=False)
    group = common.add_argument_group("global options")
    group.add_argument("--gateway", metavar="URL", default=argparse.SUPPRESS,
                       help=f"gateway base URL (default: $GATEWAY_URL, then {DEFAULT_GATEWAY})")
    group.add_argument("--secret", metavar="SECRET", default=argparse.SUPPRESS,
                       help="webhook shared secret (default: $WEBHOOK_SECRET, then $SHARED_SECRET)")
    group.add_argument("--admin-token", metavar="TOKEN", default=argparse.SUPPRESS,
                       help="admin API token (default: $PHOTOGATE_ADMIN_TOKEN)")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print machine-readable JSON instead of text")
    group.add_argument("--timeout", type=_positive, metavar="SECONDS", default=argparse.SUPPRESS,
                       help="give up on a gateway that does not answer within this time (default: 30)")

    parser = _Parser(
        prog="photogate-admin", parents=[common],
        description="Manage a photogate gateway and its GPU fleet over the gateway's HTTP API.",
        epilog="exit status: 0 ok, 1 the gateway refused, 2 usage, 3 the gateway cannot be reached",
    )
    parser.add_argument("--version", action="version", version=f"photogate-admin {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def add(sub: Any, name: str, func: Callable[..., Awaitable[None]], text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text, parents=[common])
        cmd.set_defaults(func=func)
        return cmd

    cmd = add(commands, "register", cmd_register, "register a GPU server (as the node itself would)")
    cmd.add_argument("--ip", required=True, help="the GPU server's address as the gateway reaches it")
    cmd.add_argument("--port", type=_port, required=True, help="the GPU server's port")
    cmd.add_argument("--slots", type=int, help="jobs it runs at once (default 1, or what its health reports)")
    cmd.add_argument("--weight", type=int, help="weight for the weighted strategy (default 1)")

    cmd = add(commands, "unregister", cmd_unregister, "unregister a GPU server by address or id "
              "(it stays listed, offline, with its id; remove forgets it)")
    cmd.add_argument("--ip", help="the GPU server's registered address")
    cmd.add_argument("--port", type=_port, help="the GPU server's registered port")
    cmd.add_argument("--server-id", type=parse_server_id, help="or its id, e.g. GPU-003")

    add(commands, "list", cmd_list, "list the GPU servers: health, load, last check")
    add(commands, "status", cmd_status, "gateway health and a fleet summary")
    add(commands, "info", cmd_info, "gateway version, strategy and endpoints")

    config = add(commands, "config", cmd_config_show, "show or change the gateway's configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    cmd = add(config_sub, "show", cmd_config_show, "the effective configuration (secrets masked)")
    cmd.add_argument("key", nargs="?", help="only this key or section, e.g. balancer")
    cmd = add(config_sub, "set", cmd_config_set,
              f"change a runtime setting: {', '.join(RUNTIME_KEYS)}")
    cmd.add_argument("key", help=" | ".join(RUNTIME_KEYS))
    cmd.add_argument("value", help="the new value (JSON for balancer.options)")
    add(config_sub, "reload", cmd_config_reload, "re-read the gateway's config file (as SIGHUP); "
                                                 "runtime changes stay until reset")
    cmd = add(config_sub, "reset", cmd_config_reset,
              "drop a runtime change (config set, strategy, multi-backend): the config file's value applies again")
    cmd.add_argument("key", help=" | ".join(RUNTIME_KEYS))

    cmd = add(commands, "strategy", cmd_strategy, "show the balancing strategy, or swap it")
    cmd.add_argument("name", nargs="?", help="round_robin, least_busy, weighted, or a plugin's name")
    cmd.add_argument("--option", "-o", type=_option, action="append", default=[], metavar="KEY=VALUE",
                     help="a strategy option (repeatable); VALUE is parsed as JSON when it can be")

    cmd = add(commands, "multi-backend", cmd_multi_backend, "show multi-backend mode, or turn it on or off")
    cmd.add_argument("state", nargs="?", choices=("on", "off"), help="on: every healthy node; off: one primary")

    for name, func, text in (
        ("drain", cmd_drain, "stop new work to a server; its in-flight tasks finish"),
        ("undrain", cmd_undrain, "let a drained server take new work again"),
        ("remove", cmd_remove, "remove a server from the registry (forget it: its id is not reused)"),
    ):
        cmd = add(commands, name, func, text)
        cmd.add_argument("server_id", type=parse_server_id, metavar="SERVER_ID", help="e.g. GPU-003")

    cmd = add(commands, "tasks", cmd_tasks, "recent tasks, newest first")
    cmd.add_argument("--status", choices=TASK_STATUSES, help="only tasks in this state")
    cmd.add_argument("--limit", type=_limit, default=20, help="how many (default 20)")

    cmd = add(commands, "task", cmd_task, "one task's full record: parameters, node, attempts, error, timings")
    cmd.add_argument("task_id", type=parse_task_id, metavar="TASK_ID", help="the 32-character id enhance answered with")

    cmd = add(commands, "enhance", cmd_enhance, "submit a photo through the public API; --wait saves the result")
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.add_argument("--wait", action="store_true", help="wait for the result (with a progress bar) and save it")
    cmd.add_argument("--out", type=Path, metavar="PATH",
                     help="where to save the result (implies --wait; default: FILE_enhanced.EXT beside FILE)")
    cmd.add_argument("--scale", help="upscale factor, 1 to 8")
    cmd.add_argument("--format", choices=("jpeg", "png", "webp"), help="result format")
    cmd.add_argument("--quality", help="JPEG/WebP quality, 1 to 100")
    cmd.add_argument("--max-wait", type=_positive, default=600.0, metavar="SECONDS",
                     help="how long --wait waits for the result (default 600)")

    cmd = add(commands, "wait", cmd_wait, "wait for a submitted task to finish (with a progress bar)")
    cmd.add_argument("task_id", type=parse_task_id, metavar="TASK_ID", help="the 32-character id enhance answered with")
    cmd.add_argument("--max-wait", type=_positive, default=600.0, metavar="SECONDS",
                     help="give up after this long (default 600); the task goes on")

    cmd = add(commands, "download", cmd_download, "save a completed task's result")
    cmd.add_argument("task_id", type=parse_task_id, metavar="TASK_ID", help="the 32-character id enhance answered with")
    cmd.add_argument("-o", "--out", type=Path, metavar="PATH",
                     help="file or folder to save it to (default: enhanced_TASK_ID.EXT here)")
    return parser


# -- the HTTP client --------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    gateway: str
    secret: str | None
    admin_token: str | None
    json: bool
    timeout: float


def settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    gateway = (getattr(args, "gateway", None) or env.get("GATEWAY_URL") or DEFAULT_GATEWAY).rstrip("/")
    if not gateway.startswith(("http://", "https://")):
        raise UsageError(f"--gateway: expected an http:// or https:// URL, got {gateway!r}")
    return Settings(
        gateway=gateway,
        secret=getattr(args, "secret", None) or env.get("WEBHOOK_SECRET") or env.get("SHARED_SECRET") or None,
        admin_token=getattr(args, "admin_token", None) or env.get("PHOTOGATE_ADMIN_TOKEN") or None,
        json=getattr(args, "json", False),
        timeout=getattr(args, "timeout", 30.0),
    )


class Client:
    """Requests to one gateway. Maps every transport failure to :class:`Unreachable`
    and every error answer to :class:`Refused`, with the gateway's own message."""

    def __init__(self, session: aiohttp.ClientSession, config: Settings) -> None:
        self.session = session
        self.config = config

    def secret(self) -> str:
        if not self.config.secret:
            raise UsageError("this command needs the webhook secret: --secret, $WEBHOOK_SECRET or $SHARED_SECRET")
        return self.config.secret

    def admin_token(self) -> str:
        if not self.config.admin_token:
            raise UsageError("this command needs the admin token: --admin-token, or $PHOTOGATE_ADMIN_TOKEN")
        return self.config.admin_token

    def _headers(self, auth: str | None) -> dict[str, str]:
        if auth == "secret":
            return {"X-Webhook-Secret": self.secret()}
        if auth == "admin":
            return {"Authorization": f"Bearer {self.admin_token()}"}
        return {}

    async def call(self, method: str, path: str, *, auth: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """One request whose answer is a JSON object."""
        async with self.open(method, path, auth=auth, **kwargs) as resp:
            raw = await self._read(resp)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Refused(f"{self.config.gateway}{path} answered HTTP {resp.status} with something that is not "
                          "JSON; is --gateway the photogate address?", http_status=resp.status) from None
        if not isinstance(body, dict):
            raise Refused(f"{self.config.gateway}{path} answered with JSON that is not an object",
                          http_status=resp.status)
        return body

    def open(self, method: str, path: str, *, auth: str | None = None, **kwargs: Any) -> _Response:
        return _Response(self, method, path, self._headers(auth), kwargs)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except asyncio.TimeoutError:  # before ClientError: ServerTimeoutError is both
            raise self._timed_out() from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> Unreachable:
        url = self.config.gateway
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = f"its TLS certificate was not accepted: {exc.certificate_error}"
            return Unreachable(f"cannot reach the gateway at {url}: {reason}", gateway=url, reason=reason)
        if isinstance(exc, aiohttp.ClientSSLError):
            reason = f"TLS handshake failed: {exc.os_error}"
            return Unreachable(f"cannot reach the gateway at {url}: {reason}", gateway=url, reason=reason)
        if isinstance(exc, aiohttp.ClientConnectorError):
            err = exc.os_error
            # errno gives "Connection refused" where strerror says "Connect call failed (...)";
            # DNS errors have negative codes and a good strerror.
            reason = os.strerror(err.errno) if err.errno and err.errno > 0 else (err.strerror or str(exc))
            return Unreachable(f"cannot reach the gateway at {url}: {reason}", gateway=url, reason=reason)
        reason = str(exc) or type(exc).__name__
        return Unreachable(f"lost the connection to the gateway at {url}: {reason}", gateway=url, reason=reason)

    def _timed_out(self) -> Unreachable:
        url, seconds = self.config.gateway, self.config.timeout
        return Unreachable(f"no answer from the gateway at {url} within {seconds:g} s (--timeout)",
                           gateway=url, reason="timeout")

    async def refusal(self, resp: aiohttp.ClientResponse, path: str) -> Refused:
        raw = await self._read(resp)
        try:
            message = json.loads(raw).get("error")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            message = None
        if not isinstance(message, str) or not message:
            message = f"HTTP {resp.status} {resp.reason or ''} from {self.config.gateway}{path}".strip()
        return Refused(message, http_status=resp.status)


class _Response:
    """``async with client.open(...) as resp``: a 2xx response, or the right CliError."""

    def __init__(self, client: Client, method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> None:
        self.client, self.method, self.path, self.headers, self.kwargs = client, method, path, headers, kwargs
        self.resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        client = self.client
        url = client.config.gateway + self.path
        try:
            # Never follow a redirect: it could carry the secret or the token to another host.
            self.resp = await client.session.request(
                self.method, url, headers=self.headers, allow_redirects=False, **self.kwargs
            )
        except aiohttp.InvalidURL:
            raise UsageError(f"--gateway: not a valid URL: {client.config.gateway!r}") from None
        except asyncio.TimeoutError:  # before ClientError: ServerTimeoutError is both
            raise client._timed_out() from None
        except aiohttp.ClientError as exc:
            raise client._unreachable(exc) from None
        resp = self.resp
        try:
            if 300 <= resp.status < 400:
                where = resp.headers.get("Location", "?")
                raise Refused(f"the gateway answered with a redirect ({resp.status}) to {where}; not followed because "
                              "the request carries credentials: point --gateway at the final address",
                              http_status=resp.status, location=where)
            if resp.status >= 400:
                raise await client.refusal(resp, self.path)
        except BaseException:
            resp.release()
            raise
        return resp

    async def __aexit__(self, *exc: object) -> None:
        if self.resp is not None:
            self.resp.release()


# -- output -----------------------------------------------------------------------------------


@dataclass
class Context:
    client: Client
    config: Settings
    stdout: IO[str]

    def emit(self, data: Any, text: str) -> None:
        """The command's result: ``data`` as JSON with --json, else ``text``."""
        if self.config.json:
            self.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n")
        elif text:
            self.stdout.write(text.rstrip("\n") + "\n")

    def write(self, text: str) -> None:
        """Progress output; never mixed into --json output."""
        if not self.config.json:
            self.stdout.write(text)
            self.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["—" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def ago(timestamp: float | None, now: float | None = None) -> str:
    if not timestamp:
        return "never"
    seconds = max((now or time.time()) - timestamp, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def when(timestamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else None


def size(nbytes: int | None) -> str:
    if nbytes is None:
        return "—"
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < 1024 * 1024:
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / 1024 / 1024:.1f} MiB"


def duration(seconds: float | None) -> str:
    """A duration as a person reads it: ``45 ms``, ``17.8 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d 5 h``."""
    if seconds is None:
        return "—"
    seconds = max(float(seconds), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f}".removesuffix(".0") + " s"
    whole = int(seconds)
    for big, small, big_unit, small_unit in ((86400, 3600, "d", "h"), (3600, 60, "h", "min"), (60, 1, "min", "s")):
        if whole >= big:
            high, low = divmod(whole, big)
            low //= small
            return f"{high} {big_unit} {low} {small_unit}" if low else f"{high} {big_unit}"
    raise AssertionError("unreachable")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def on_off(value: Any) -> str:
    return "on" if value else "off"


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(flatten(value, name + "."))
        else:
            items.append((name, value))
    return items


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


#: The config's secret field names (``photogate.config.secret_names``); a key containing one is masked.
SECRET_WORDS = tuple(sorted(secret_names()))


def _masked(data: Any, key: str = "") -> Any:
    """Belt and braces over the gateway's own masking: a credential is never printed."""
    if isinstance(data, Mapping):
        return {k: _masked(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_masked(v, key) for v in data]
    if data and isinstance(data, str) and any(word in key.lower() for word in SECRET_WORDS):
        return "***"
    return data


# -- commands ---------------------------------------------------------------------------------


async def cmd_register(ctx: Context, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"ip": args.ip, "port": args.port, "secret": ctx.client.secret()}
    for key in ("slots", "weight"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    data = _masked(await ctx.client.call("POST", "/webhook/register", json=body))  # node_token
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
        f"{fleet.get('unhealthy_servers', 0)} unhealthy{_offline(fleet.get('offline_servers'))}; "
        f"strategy {fleet.get('strategy', '?')}, "
        f"multi-backend {on_off(fleet.get('multi_backend'))}, "
        f"health checks {'running' if fleet.get('health_check_running') else 'stopped'}"
    )
    ctx.emit(data, "\n".join(lines))


def _offline(count: object) -> str:
    """", N offline" when some nodes are offline (unregistered, kept with their ids)."""
    return f", {count} offline" if isinstance(count, int) and count > 0 else ""


async def cmd_status(ctx: Context, args: argparse.Namespace) -> None:
    data = await ctx.client.call("GET", "/api/v1/health")
    fleet = data.get("fleet") or {}
    tasks = data.get("tasks") or {}
    lines = [
        f"gateway   {ctx.config.gateway}  {data.get('status')}  "
        f"(photogate {data.get('version')}, up {duration(data.get('uptime'))})",
        f"fleet     {plural(fleet.get('total', 0), 'server')}: {fleet.get('healthy', 0)} healthy, "
        f"{fleet.get('unhealthy', 0)} unhealthy{_offline(fleet.get('offline'))}, "
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
            f"the file says {_scalar(entry.get('file_value'))} (undo: photogate-admin config reset {key})")


def _sources(runtime: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """Where each runtime key's value comes from, as comment lines."""
    return [f"# {k}: {'runtime change' if (runtime.get(k) or {}).get('source') == 'runtime' else 'config file'}"
            for k in keys if k in runtime]


async def cmd_config_show(ctx: Context, args: argparse.Namespace) -> None:
    data = _masked(await _config(ctx))
    runtime = data.pop("runtime", None) or {}  # the admin view: where each runtime value comes from
    key = getattr(args, "key", None)
    items = flatten(data)
    if key:
        items = [(k, v) for k, v in items if k == key or k.startswith(key + ".")]
        if not items:
            raise UsageError(f"config show: no key {key!r}; try `photogate-admin config show`")
        data = {k: v for k, v in items}
    elif runtime:  # --json: the whole view keeps the sources; one key's view keeps its flat shape
        data["runtime"] = runtime
    lines = [f"{k} = {_scalar(v)}{_runtime_note(k, runtime)}" for k, v in items]
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
        options = _json_or_text(value)
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


async def cmd_tasks(ctx: Context, args: argparse.Namespace) -> None:
    params = {"limit": str(args.limit)}
    if args.status:
        params["status"] = args.status
    data = await ctx.client.call("GET", "/api/v1/admin/tasks/recent", auth="admin", params=params)
    tasks = data.get("tasks") or []
    rows = [
        (t.get("task_id"), t.get("status"), t.get("server_id"), t.get("attempts"),
         f"{t.get('width')}x{t.get('height')}", when(t.get("created_at")), _short(t.get("error"), 60))
        for t in tasks
    ]
    text = table(("TASK", "STATUS", "SERVER", "TRIES", "SIZE", "CREATED", "ERROR"), rows) if rows else "no tasks"
    ctx.emit(data, text)


def _short(text: str | None, width: int) -> str | None:
    return text if text is None or len(text) <= width else text[: width - 1] + "…"


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


# -- enhance ----------------------------------------------------------------------------------


def _eta_words(status: dict[str, Any]) -> str:
    """``eta 12.5s`` (and when a queued task should start), or nothing when unknown."""
    eta = status.get("eta_seconds")
    if status.get("status") not in ("queued", "processing") or not isinstance(eta, (int, float)):
        return ""
    start = status.get("estimated_start_seconds")
    if status.get("status") == "queued" and isinstance(start, (int, float)):
        return f"starts in {start:.0f}s, eta {eta:.0f}s"
    return f"eta {eta:.1f}s"


class Progress:
    """A redrawn bar on a terminal; one line per change of state otherwise."""

    WIDTH = 30

    def __init__(self, ctx: Context, task_id: str) -> None:
        self.ctx = ctx
        self.task_id = task_id
        isatty = getattr(ctx.stdout, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.started = time.monotonic()
        self.last: tuple[Any, ...] | None = None

    def update(self, status: dict[str, Any]) -> None:
        state, server = status.get("status"), status.get("server_id")
        label = f"{state} on {server}" if state == "processing" and server else str(state)
        position = status.get("queue_position")
        if state == "queued" and isinstance(position, int):
            label = f"queued, #{position}"
        elapsed = time.monotonic() - self.started
        eta = _eta_words(status)
        if self.tty:
            fraction = min(max(float(status.get("progress") or 0.0), 0.0), 1.0)
            filled = round(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            # Padded: a shorter line must cover the longer one it redraws.
            self.ctx.write(f"\r[{bar}] {fraction:4.0%}  {label:<20} {elapsed:5.1f}s  {eta:<18}")
        elif (state, server) != self.last:
            self.ctx.write(f"{elapsed:6.1f}s  task {self.task_id} {label}{'  ' + eta if eta else ''}\n")
        self.last = (state, server)

    def done(self) -> None:
        if self.tty:
            self.ctx.write("\n")


async def cmd_enhance(ctx: Context, args: argparse.Namespace) -> None:
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"enhance: no such file: {path}")
    if args.out is not None and not args.out.is_dir() and not args.out.parent.is_dir():
        raise UsageError(f"enhance: --out {args.out}: no such directory: {args.out.parent}")
    form = aiohttp.FormData()
    for key in ("scale", "format", "quality"):
        if getattr(args, key):
            form.add_field(key, str(getattr(args, key)))
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UsageError(f"enhance: cannot read {path}: {exc.strerror}") from None
    with handle:  # aiohttp streams it; the gateway checks the real format
        form.add_field("file", handle, filename=path.name, content_type=content_type)
        submitted = await ctx.client.call("POST", "/api/v1/enhance", data=form)
    task_id = str(submitted.get("task_id"))
    if not (args.wait or args.out):
        ctx.emit(submitted, f"submitted task {task_id} ({submitted.get('status')}); "
                            f"`photogate-admin wait {task_id}` waits for it and `download {task_id}` saves it "
                            "(or use --wait)")
        return

    status = await _wait_completed(ctx, task_id, args.max_wait)
    out, nbytes, mime = await _download(ctx, task_id, args.out, folder=path.parent, stem=f"{path.stem}_enhanced")
    ctx.emit({**status, "saved_to": str(out), "bytes": nbytes, "content_type": mime},
             f"saved the enhanced image to {out} ({mime}, {size(nbytes)})")


async def cmd_wait(ctx: Context, args: argparse.Namespace) -> None:
    task_id = args.task_id
    status = await _wait_completed(ctx, task_id, args.max_wait)
    ctx.emit(status, f"task {task_id} completed on {status.get('server_id') or '?'}; "
                     f"save it with `photogate-admin download {task_id}`")


async def cmd_download(ctx: Context, args: argparse.Namespace) -> None:
    out_arg: Path | None = args.out
    if out_arg is not None and not out_arg.is_dir() and not out_arg.parent.is_dir():
        raise UsageError(f"download: -o {out_arg}: no such directory: {out_arg.parent}")
    out, nbytes, mime = await _download(ctx, args.task_id, out_arg, folder=Path.cwd(),
                                        stem=f"enhanced_{args.task_id}")
    ctx.emit({"task_id": args.task_id, "saved_to": str(out), "bytes": nbytes, "content_type": mime},
             f"saved the enhanced image to {out} ({mime}, {size(nbytes)})")


async def _wait_completed(ctx: Context, task_id: str, max_wait: float) -> dict[str, Any]:
    """Wait (with a progress bar) for ``completed``; a failed task is a refusal (exit 1)."""
    status = await _wait_finished(ctx, task_id, max_wait, Progress(ctx, task_id))
    if status.get("status") == "failed":
        raise Refused(f"task {task_id} failed: {status.get('error')}", task=status)
    return status


async def _wait_finished(ctx: Context, task_id: str, max_wait: float, progress: Progress) -> dict[str, Any]:
    deadline = time.monotonic() + max_wait
    pause = 0.05
    try:
        while True:
            status = await ctx.client.call("GET", f"/api/v1/status/{task_id}")
            progress.update(status)
            if status.get("status") in ("completed", "failed"):
                return status
            if time.monotonic() > deadline:
                raise Refused(f"task {task_id} is still {status.get('status')} after {max_wait:g} s; "
                              f"wait again with `photogate-admin wait {task_id}`", task=status)
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 1.0)
    finally:
        progress.done()


async def _download(ctx: Context, task_id: str, out: Path | None, *, folder: Path, stem: str) -> tuple[Path, int, str]:
    """Stream the result to ``out`` (a file, or a folder for ``stem.EXT``; default ``folder``),
    through ``.part``: a file that exists under its name is whole."""
    loop = asyncio.get_running_loop()
    async with ctx.client.open("GET", f"/api/v1/download/{task_id}") as resp:
        mime = resp.content_type
        if out is None or out.is_dir():
            out = (out or folder) / f"{stem}.{EXTENSIONS.get(mime, 'bin')}"
        partial = out.with_name(out.name + ".part")
        try:
            handle = await loop.run_in_executor(None, partial.open, "wb")
        except OSError as exc:
            raise UsageError(f"cannot write {partial}: {exc.strerror}", task_id=task_id) from None
        nbytes, complete = 0, False
        try:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                await loop.run_in_executor(None, handle.write, chunk)
                nbytes += len(chunk)
            complete = True
        except asyncio.TimeoutError:
            raise ctx.client._timed_out() from None
        except aiohttp.ClientError as exc:
            raise ctx.client._unreachable(exc) from None
        finally:
            await loop.run_in_executor(None, handle.close)
            if not complete:
                partial.unlink(missing_ok=True)
    await loop.run_in_executor(None, partial.replace, out)
    return out, nbytes, mime


# -- entry points -----------------------------------------------------------------------------


async def run(argv: Sequence[str] | None = None, stdout: IO[str] | None = None,
              env: Mapping[str, str] | None = None, stderr: IO[str] | None = None) -> int:
    """The whole CLI as a coroutine: parse ``argv``, run the command, return the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    environ = os.environ if env is None else env
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except _ParserExit as exc:
        out.write(exc.out)
        err.write(exc.err)
        return exc.status
    as_json = getattr(args, "json", False)
    try:
        config = settings(args, environ)
        timeout = aiohttp.ClientTimeout(total=None, connect=config.timeout, sock_read=config.timeout)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"photogate-admin/{__version__}"},
        ) as session:
            await args.func(Context(Client(session, config), config, out), args)
    except CliError as exc:
        if as_json:  # once: a script reads the JSON document, and stderr stays empty
            out.write(json.dumps({"error": exc.message, "exit_status": int(exc.status), **exc.data},
                                 ensure_ascii=False, indent=2) + "\n")
        else:
            err.write(f"photogate-admin: {exc.message}\n")
        return int(exc.status)
    return ExitStatus.OK


def main(argv: Sequence[str] | None = None, stdout: IO[str] | None = None,
         env: Mapping[str, str] | None = None, stderr: IO[str] | None = None) -> int:
    """The ``photogate-admin`` console script."""
    try:
        return asyncio.run(run(argv, stdout=stdout, env=env, stderr=stderr))
    except KeyboardInterrupt:
        (stderr or sys.stderr).write("photogate-admin: interrupted\n")
        return ExitStatus.INTERRUPTED
