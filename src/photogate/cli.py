"""``photogate``: run the gateway."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import ssl
import sys
from collections.abc import AsyncIterator, Sequence

import structlog
from aiohttp import web

from . import __version__, listen
from .app import create_app
from .balancing import StrategyError
from .config import ENV_OVERRIDES, ConfigError, load_config
from .devmode import dev_credentials
from .errors import StoreUnavailable
from .keys import GATEWAY
from .logsetup import configure_logging

log = structlog.get_logger("photogate.cli")


def env_help() -> str:
    """The environment variables the gateway reads, from the table config.py applies."""
    width = max(map(len, ENV_OVERRIDES)) + 2
    lines = [f"  {var:<{width}}{dotted}" for var, dotted in ENV_OVERRIDES.items()]
    lines.append(f"  {'NO_COLOR':<{width}}set: --dev logs without ANSI colours (never used when not a terminal)")
    return "environment (overrides the config file's key; a flag overrides both):\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photogate",
        description="Run the photogate gateway: public photo API, GPU node webhook, admin API.",
        epilog=env_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see config.yaml)")
    parser.add_argument("--host", help="listen address (server.host)")
    parser.add_argument("--port", type=int,
                        help="listen port (server.port; 0: any free port, logged by gateway_listening)")
    parser.add_argument("--data-dir", metavar="DIR", help="where the database and photos live (storage.data_dir)")
    parser.add_argument(
        "--dev", action="store_true",
        help="development mode: readable logs, and the well-known secret is allowed",
    )
    parser.add_argument("--version", action="version", version=f"photogate {__version__}")
    return parser


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a faster event loop; Linux and macOS), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _reload_on_sighup(app: web.Application) -> AsyncIterator[None]:
    """While the gateway runs, SIGHUP re-reads the config file (where the platform has SIGHUP)."""
    def reload() -> None:
        try:
            app[GATEWAY].reload_config()
        except (ConfigError, StrategyError) as exc:
            log.error("config_reload_failed", error=str(exc))

    loop = asyncio.get_running_loop()
    if hasattr(signal, "SIGHUP"):
        loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        yield
    finally:
        if hasattr(signal, "SIGHUP"):
            loop.remove_signal_handler(signal.SIGHUP)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"server.host": args.host, "server.port": args.port, "storage.data_dir": args.data_dir}
    try:
        config = load_config(args.config, overrides=overrides, dev=args.dev)
    except ConfigError as exc:
        sys.stderr.write(f"photogate: config error: {exc}\n")
        return 2
    configure_logging(dev=config.dev, level=config.logging.level)
    if config.dev:
        log.warning("dev_credentials", **dev_credentials(config))
    try:
        app = create_app(config, config_path=args.config)
    except StrategyError as exc:
        sys.stderr.write(f"photogate: config error: balancer.strategy: {exc}\n")
        return 2
    except ConfigError as exc:
        sys.stderr.write(f"photogate: config error: {exc}\n")
        return 2

    ssl_context = None
    if config.server.tls.cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.server.tls.cert, config.server.tls.key)

    app.cleanup_ctx.append(_reload_on_sighup)
    try:
        sockets = listen.bind(config.server.host, config.server.port)
    except OSError as exc:
        sys.stderr.write(f"photogate: cannot listen on {config.server.host}:{config.server.port}: {exc}; "
                         "choose another server.port (0: any free port) or stop what holds it\n")
        return 2
    port = listen.bound_port(sockets)
    scheme = "https" if ssl_context else "http"

    def started(*_: object) -> None:
        # run_app calls its ``print`` once the app has started and every socket serves.
        log.info("gateway_listening", url=f"{scheme}://{config.server.host}:{port}", port=port, dev=config.dev)

    try:
        web.run_app(
            app, sock=sockets, ssl_context=ssl_context,
            print=started, access_log=None, handle_signals=True, loop=_new_loop(),
        )  # the connections' deadlines are the app's (app.py: _connection_limits)
    except StoreUnavailable as exc:
        sys.stderr.write(f"photogate: state store error: {exc.message}; start Redis or fix storage.redis_url\n")
        return 3
    except sqlite3.DatabaseError as exc:
        # A damaged database file: say which, and what to do (README, Operations), not a traceback.
        sys.stderr.write(f"photogate: data error: {config.data_path / 'photogate.db'}: {exc}; stop, move the file "
                         "and its -wal/-shm aside, and restore a backup or start empty (README: Operations)\n")
        return 3
    finally:
        for sock in sockets:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
