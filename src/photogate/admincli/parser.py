"""The argument tree of ``photogate-admin``: global options, then one small function per
command group that adds its commands and their arguments (the commands live in
:mod:`photogate.admincli.commands`).

The parser raises :class:`ParserExit` instead of printing and exiting, so that
:func:`photogate.admincli.program.run` can be awaited in-process with its own streams.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeAlias

from .. import __version__
from .client import DEFAULT_GATEWAY
from .commands.config import (
    RUNTIME_KEYS,
    cmd_config_reload,
    cmd_config_reset,
    cmd_config_set,
    cmd_config_show,
    cmd_multi_backend,
    cmd_strategy,
    json_or_text,
)
from .commands.gateway import cmd_info, cmd_status
from .commands.keys import cmd_keys_create, cmd_keys_list, cmd_keys_revoke
from .commands.nodes import cmd_drain, cmd_list, cmd_register, cmd_remove, cmd_undrain, cmd_unregister
from .commands.photos import cmd_download, cmd_enhance, cmd_wait
from .commands.tasks import TASK_STATUSES, cmd_task, cmd_tasks
from .context import Command
from .errors import ExitStatus


class ParserExit(Exception):
    """What argparse would have printed (``out``: help, version; ``err``: a usage error) and the status."""

    def __init__(self, status: int, out: str = "", err: str = "") -> None:
        super().__init__(status)
        self.status, self.out, self.err = status, out, err


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`ParserExit` instead of printing to sys.stdout and exiting."""

    def _print_message(self, message: str, file: object = None) -> None:
        if message:
            self.__dict__.setdefault("_printed", []).append(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise ParserExit(status, "".join(self.__dict__.get("_printed", [])), message or "")

    def error(self, message: str) -> NoReturn:
        raise ParserExit(ExitStatus.USAGE, err=f"{self.format_usage()}{self.prog}: error: {message}\n")


if TYPE_CHECKING:  # argparse does not subscript it at runtime
    Subcommands: TypeAlias = argparse._SubParsersAction[Parser]


# -- argument types ---------------------------------------------------------------------------


def port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {value!r}")
    return int(value)


def positive_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 10_000:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 10000, got {value!r}")
    return int(value)


def option(value: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it can be."""
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), json_or_text(raw)


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


# -- the tree ---------------------------------------------------------------------------------


def build_parser() -> Parser:
    common = _global_options()
    parser = Parser(
        prog="photogate-admin", parents=[common],
        description="Manage a photogate gateway and its GPU fleet over the gateway's HTTP API.",
        epilog="exit status: 0 ok, 1 the gateway refused, 2 usage, 3 the gateway cannot be reached",
    )
    parser.add_argument("--version", action="version", version=f"photogate-admin {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    _add_registration(commands, common)
    _add_gateway(commands, common)
    _add_config(commands, common)
    _add_runtime(commands, common)
    _add_node_admin(commands, common)
    _add_tasks(commands, common)
    _add_photos(commands, common)
    _add_keys(commands, common)
    return parser


def _global_options() -> Parser:
    # Global options live in a parent parser added to every subparser, with SUPPRESS
    # defaults, so they work before and after the command (`list --gateway URL` as the
    # seed's client wrote it) and a subparser's default never hides a value given earlier.
    common = Parser(add_help=False)
    group = common.add_argument_group("global options")
    group.add_argument("--gateway", metavar="URL", default=argparse.SUPPRESS,
                       help=f"gateway base URL (default: $GATEWAY_URL, then {DEFAULT_GATEWAY})")
    group.add_argument("--secret", metavar="SECRET", default=argparse.SUPPRESS,
                       help="webhook shared secret (default: $WEBHOOK_SECRET, then $SHARED_SECRET)")
    group.add_argument("--admin-token", metavar="TOKEN", default=argparse.SUPPRESS,
                       help="admin API token (default: $PHOTOGATE_ADMIN_TOKEN)")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print machine-readable JSON instead of text")
    group.add_argument("--timeout", type=positive_seconds, metavar="SECONDS", default=argparse.SUPPRESS,
                       help="give up on a gateway that does not answer within this time (default: 30)")
    return common


def _add(sub: Subcommands, common: Parser, name: str, func: Command, text: str) -> Parser:
    cmd = sub.add_parser(name, help=text, description=text, parents=[common])
    cmd.set_defaults(func=func)
    return cmd


def _add_registration(commands: Subcommands, common: Parser) -> None:
    cmd = _add(commands, common, "register", cmd_register, "register a GPU server (as the node itself would)")
    cmd.add_argument("--ip", required=True, help="the GPU server's address as the gateway reaches it")
    cmd.add_argument("--port", type=port, required=True, help="the GPU server's port")
    cmd.add_argument("--slots", type=int, help="jobs it runs at once (default 1, or what its health reports)")
    cmd.add_argument("--weight", type=int, help="weight for the weighted strategy (default 1)")

    cmd = _add(commands, common, "unregister", cmd_unregister, "unregister a GPU server by address or id "
               "(it stays listed, offline, with its id; remove forgets it)")
    cmd.add_argument("--ip", help="the GPU server's registered address")
    cmd.add_argument("--port", type=port, help="the GPU server's registered port")
    cmd.add_argument("--server-id", type=parse_server_id, help="or its id, e.g. GPU-003")

    _add(commands, common, "list", cmd_list, "list the GPU servers: health, load, last check")


def _add_gateway(commands: Subcommands, common: Parser) -> None:
    _add(commands, common, "status", cmd_status, "gateway health and a fleet summary")
    _add(commands, common, "info", cmd_info, "gateway version, strategy and endpoints")


def _add_config(commands: Subcommands, common: Parser) -> None:
    config = _add(commands, common, "config", cmd_config_show, "show or change the gateway's configuration")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", parser_class=Parser)
    cmd = _add(actions, common, "show", cmd_config_show, "the effective configuration (secrets masked)")
    cmd.add_argument("key", nargs="?", help="only this key or section, e.g. balancer")
    cmd = _add(actions, common, "set", cmd_config_set, f"change a runtime setting: {', '.join(RUNTIME_KEYS)}")
    cmd.add_argument("key", help=" | ".join(RUNTIME_KEYS))
    cmd.add_argument("value", help="the new value (JSON for balancer.options)")
    _add(actions, common, "reload", cmd_config_reload, "re-read the gateway's config file (as SIGHUP); "
                                                       "runtime changes stay until reset")
    cmd = _add(actions, common, "reset", cmd_config_reset,
               "drop a runtime change (config set, strategy, multi-backend): the config file's value applies again")
    cmd.add_argument("key", help=" | ".join(RUNTIME_KEYS))


def _add_runtime(commands: Subcommands, common: Parser) -> None:
    cmd = _add(commands, common, "strategy", cmd_strategy, "show the balancing strategy, or swap it")
    cmd.add_argument("name", nargs="?", help="round_robin, least_busy, weighted, or a plugin's name")
    cmd.add_argument("--option", "-o", type=option, action="append", default=[], metavar="KEY=VALUE",
                     help="a strategy option (repeatable); VALUE is parsed as JSON when it can be")

    cmd = _add(commands, common, "multi-backend", cmd_multi_backend, "show multi-backend mode, or turn it on or off")
    cmd.add_argument("state", nargs="?", choices=("on", "off"), help="on: every healthy node; off: one primary")


def _add_node_admin(commands: Subcommands, common: Parser) -> None:
    for name, func, text in (
        ("drain", cmd_drain, "stop new work to a server; its in-flight tasks finish"),
        ("undrain", cmd_undrain, "let a drained server take new work again"),
        ("remove", cmd_remove, "remove a server from the registry (forget it: its id is not reused)"),
    ):
        cmd = _add(commands, common, name, func, text)
        cmd.add_argument("server_id", type=parse_server_id, metavar="SERVER_ID", help="e.g. GPU-003")


def _add_tasks(commands: Subcommands, common: Parser) -> None:
    cmd = _add(commands, common, "tasks", cmd_tasks, "recent tasks, newest first")
    cmd.add_argument("--status", choices=TASK_STATUSES, help="only tasks in this state")
    cmd.add_argument("--limit", type=limit, default=20, help="how many (default 20)")

    cmd = _add(commands, common, "task", cmd_task,
               "one task's full record: parameters, node, attempts, error, timings")
    _task_id_argument(cmd)


def _task_id_argument(cmd: Parser) -> None:
    cmd.add_argument("task_id", type=parse_task_id, metavar="TASK_ID", help="the 32-character id enhance answered with")


def _add_photos(commands: Subcommands, common: Parser) -> None:
    cmd = _add(commands, common, "enhance", cmd_enhance,
               "submit a photo through the public API; --wait saves the result")
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.add_argument("--wait", action="store_true", help="wait for the result (with a progress bar) and save it")
    cmd.add_argument("--out", type=Path, metavar="PATH",
                     help="where to save the result (implies --wait; default: FILE_enhanced.EXT beside FILE)")
    cmd.add_argument("--scale", help="upscale factor, 1 to 8")
    cmd.add_argument("--format", choices=("jpeg", "png", "webp"), help="result format")
    cmd.add_argument("--quality", help="JPEG/WebP quality, 1 to 100")
    cmd.add_argument("--max-wait", type=positive_seconds, default=600.0, metavar="SECONDS",
                     help="how long --wait waits for the result (default 600)")

    cmd = _add(commands, common, "wait", cmd_wait, "wait for a submitted task to finish (with a progress bar)")
    _task_id_argument(cmd)
    cmd.add_argument("--max-wait", type=positive_seconds, default=600.0, metavar="SECONDS",
                     help="give up after this long (default 600); the task goes on")

    cmd = _add(commands, common, "download", cmd_download, "save a completed task's result")
    _task_id_argument(cmd)
    cmd.add_argument("-o", "--out", type=Path, metavar="PATH",
                     help="file or folder to save it to (default: enhanced_TASK_ID.EXT here)")


def _add_keys(commands: Subcommands, common: Parser) -> None:
    keys = _add(commands, common, "keys", cmd_keys_list, "API keys for the public API: create, list, revoke")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=Parser)
    cmd = _add(actions, common, "create", cmd_keys_create, "issue a key (printed once: only its hash is kept)")
    cmd.add_argument("name", help="who the key is for, e.g. 'web shop'")
    cmd.add_argument("--class", dest="klass", metavar="CLASS",
                     help="its priority class (default: access.default_class)")
    cmd.add_argument("--photos-per-day", type=int, metavar="N", help="quota: photos a UTC day (default: none)")
    cmd.add_argument("--megapixels-per-day", type=float, metavar="MP",
                     help="quota: megapixels a UTC day (default: none)")
    _add(actions, common, "list", cmd_keys_list, "every key: class, quota, today's use, state")
    cmd = _add(actions, common, "revoke", cmd_keys_revoke, "revoke a key: refused at once on every gateway")
    cmd.add_argument("key_id", metavar="KEY_ID", help="the key's id (its first 12 characters, as keys list shows)")
