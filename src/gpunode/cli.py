"""``gpunode``: run a node. Flags override environment variables, which override defaults."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog
from aiohttp import web

from . import __version__
from .app import create_app
from .config import NodeConfig
from .logs import configure_logging
from .model import ModelError

ENV_HELP = """environment (a flag wins over its variable):
  GATEWAY_URL        gateway base URL (--gateway); ignored when --token is given, which
                     makes a standalone node
  SHARED_SECRET      registration secret (--secret); prefer it, or a file, to the flag,
                     which any user on the machine can read in `ps`
  GPUNODE_SECRET_FILE  file holding the registration secret (--secret-file)
  PORT               listen port (--port)
  GPUNODE_STATE_DIR  where the node key lives (--state-dir)
  GPUNODE_TOKEN      standalone inference token (--token)
  GPUNODE_MODEL      model file (--model)
  GPUNODE_ADVERTISE_IP  IP the gateway calls back (--advertise-ip)
  NO_COLOR           set: --dev logs without ANSI colours (never used when not a terminal)
"""


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    d = NodeConfig()
    p = argparse.ArgumentParser(
        prog="gpunode", description="photogate GPU node: an ONNX super-resolution model behind HTTP.",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"gpunode {__version__}")
    p.add_argument("--gateway", default=None,
                   help="gateway base URL to register with (default $GATEWAY_URL, unless --token is given)")
    p.add_argument("--secret", default=None,
                   help="the gateway's webhook secret (visible in `ps`: prefer $SHARED_SECRET or --secret-file)")
    p.add_argument("--secret-file", type=Path, default=env.get("GPUNODE_SECRET_FILE") or None,
                   help="read the webhook secret from this file (first line; e.g. a systemd credential)")
    p.set_defaults(env_secret=env.get("SHARED_SECRET", ""), env_gateway=env.get("GATEWAY_URL", ""),
                   env_token=env.get("GPUNODE_TOKEN", ""))
    p.add_argument("--token", default=None,
                   help="standalone mode (no gateway; $GATEWAY_URL is then ignored): the bearer token "
                        "inference requests must carry (default $GPUNODE_TOKEN)")
    p.add_argument("--host", default=d.host, help="listen address (default %(default)s)")
    p.add_argument("--port", type=int, default=int(env.get("PORT", d.port)),
                   help="listen port (default $PORT or %(default)s; 0 picks a free one)")
    p.add_argument("--advertise-ip", default=env.get("GPUNODE_ADVERTISE_IP", ""),
                   help="IP the gateway should call (default $GPUNODE_ADVERTISE_IP, else the local address "
                        "that routes to the gateway)")
    p.add_argument("--ip-url", default="", help="URL answering this node's public IP as text (NAT'd nodes)")
    p.add_argument("--ip-check-interval", type=float, default=d.ip_check_interval,
                   help="seconds between IP checks; a change re-registers (default %(default)s)")
    p.add_argument("--gateway-check-interval", type=float, default=d.gateway_check_interval,
                   help="seconds between asking the gateway whether it still lists us; 0 = never "
                        "(default %(default)s)")
    p.add_argument("--register-backoff-max", type=float, default=d.register_backoff_max,
                   help="cap of the registration retry backoff in seconds (default %(default)s)")
    p.add_argument("--state-dir", type=Path, default=env.get("GPUNODE_STATE_DIR") or None,
                   help="state dir for the node key (default ~/.local/state/gpunode/<port>)")
    p.add_argument("--model", type=Path, default=env.get("GPUNODE_MODEL") or None,
                   help="ONNX model (default: the bundled waifu2x UpConv7 photo x2)")
    p.add_argument("--tile-size", type=int, default=d.tile_size,
                   help="tile side in input px; memory is bounded by it (default: 192 on CPU, 512 on CUDA)")
    p.add_argument("--tile-overlap", type=int, default=d.tile_overlap,
                   help="overlap between tiles in input px, >= 8 (default %(default)s)")
    p.add_argument("--queue-size", type=int, default=d.queue_size,
                   help="jobs that may wait for a slot before 503 (default %(default)s)")
    p.add_argument("--slots", type=int, default=0, help="inference workers (default: one per GPU, 1 on CPU)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime CPU threads (default: all cores)")
    p.add_argument("--max-input-pixels", type=int, default=d.max_input_pixels,
                   help="largest photo accepted, in pixels (width x height); more gets 400 (default %(default)s)")
    p.add_argument("--cpu", action="store_true", help="use the CPU even where CUDA is available")
    p.add_argument("--simulate", action="store_true",
                   help="no model: each job waits megapixels / --speed seconds and answers its input "
                        "(benchmarks and tests of many or mixed nodes); see --sim-output")
    p.add_argument("--speed", type=float, default=1.0, help="with --simulate: MP/s per slot (default %(default)s)")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="with --simulate: each job's time varies by up to this fraction (default %(default)s)")
    p.add_argument("--sim-output", choices=("echo", "mirror"), default="echo",
                   help="with --simulate: answer the input itself, or the input flipped left to right "
                        "(a result a client can check; default %(default)s)")
    p.add_argument("--dev", action="store_true", help="readable console logs")
    p.add_argument("--log-level", default="info", type=str.lower, choices=("debug", "info", "warning", "error"),
                   help="least severe log events written (default %(default)s)")
    return p


def read_secret(args: argparse.Namespace) -> str:
    """The webhook secret: ``--secret``, else ``--secret-file``, else ``$SHARED_SECRET``."""
    if args.secret is not None and args.secret_file is not None:
        raise ValueError("--secret and --secret-file: give one of them")
    if args.secret is not None:
        return str(args.secret)
    if args.secret_file is None:
        return str(args.env_secret)
    secret_file: Path = args.secret_file
    try:
        secret = secret_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--secret-file {secret_file}: cannot read it ({exc.__class__.__name__})") from None
    if not secret:
        raise ValueError(f"--secret-file {secret_file}: the file is empty")
    return secret


def gateway_and_token(args: argparse.Namespace) -> tuple[str, str]:
    """The node's mode: ``(gateway_url, "")`` registers with a gateway, ``("", token)`` is standalone.

    A flag wins over the environment, and ``--token`` is a flag for standalone use: with it,
    ``$GATEWAY_URL`` (exported for photogate-admin, say) is ignored instead of turning the node
    into a gateway node that then wants a secret. Only the two flags together are an error."""
    if args.gateway and args.token:
        raise ValueError("--gateway and --token: give one. A node registered with a gateway accepts only the "
                         "token that gateway issues; --token is for a standalone node")
    if args.gateway is not None:
        return args.gateway, "" if args.gateway else (args.token or args.env_token)
    if args.token is not None:
        return "", args.token
    return args.env_gateway, "" if args.env_gateway else args.env_token


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    secret = read_secret(args)
    gateway, token = gateway_and_token(args)
    if args.tile_overlap < 8:
        raise ValueError("--tile-overlap must be at least 8")
    if args.tile_size and args.tile_size < 4 * args.tile_overlap:
        raise ValueError("--tile-size must be at least 4 x --tile-overlap")
    if gateway and not secret:
        if args.gateway is None:  # it came from the environment: say so, and how to run standalone
            raise ValueError(f"$GATEWAY_URL is set ({gateway}), so this node registers with that gateway and needs "
                             "its webhook secret: $SHARED_SECRET, --secret-file or --secret. For a standalone node "
                             "pass --token T (then $GATEWAY_URL is ignored) or unset GATEWAY_URL")
        raise ValueError("--gateway needs the webhook secret: $SHARED_SECRET, --secret-file or --secret")
    if args.queue_size < 0:
        raise ValueError("--queue-size must be >= 0")
    if args.simulate and args.speed <= 0:
        raise ValueError("--speed must be > 0 megapixels per second")
    if not 0 <= args.jitter < 1:
        raise ValueError("--jitter must be in [0, 1)")
    return NodeConfig(
        host=args.host, port=args.port, gateway_url=gateway, secret=secret, token=token,
        advertise_ip=args.advertise_ip, ip_url=args.ip_url, ip_check_interval=args.ip_check_interval,
        gateway_check_interval=args.gateway_check_interval, register_backoff_max=args.register_backoff_max,
        state_dir=args.state_dir, model_path=args.model, tile_size=args.tile_size,
        tile_overlap=args.tile_overlap, queue_size=args.queue_size, slots=args.slots, threads=args.threads,
        max_input_pixels=args.max_input_pixels, cpu_only=args.cpu, dev=args.dev,
        simulate_speed=args.speed if args.simulate else 0.0, simulate_jitter=args.jitter,
        simulate_output=args.sim_output,
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    configure_logging(dev=args.dev, level=args.log_level)
    log = structlog.get_logger("gpunode")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    if args.secret is not None:
        log.warning("secret_on_command_line", hint="every user of this machine can read --secret in `ps`; "
                    "set SHARED_SECRET (e.g. systemd EnvironmentFile=) or use --secret-file")
    # Bind first so --port 0 knows its port before registering.
    try:
        sock = socket.create_server((config.host, config.port), reuse_port=False)
    except OSError as exc:
        where = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
        sys.stderr.write(f"gpunode: cannot listen on {where}: {exc.strerror or exc}; "
                         "choose another --port (0: any free port) or stop what holds it\n")
        return 2
    port = sock.getsockname()[1]
    if port != config.port:
        from dataclasses import replace

        config = replace(config, port=port)
    if args.gateway is None and args.token is not None and args.env_gateway:
        log.info("gateway_url_ignored", reason="--token makes a standalone node; $GATEWAY_URL is not used",
                 hint="to register with the gateway, pass --gateway (or drop --token)")
    if not config.gateway_url and not config.token:
        log.warning("no_gateway_no_token", hint="pass --gateway URL --secret S, or --token T for standalone use; "
                    "until then every inference request gets 401")
    try:
        app = create_app(config)
        log.info("starting", host=config.host, port=port, gateway=config.gateway_url or None,
                 model=str(config.model_file))

        def listening(*_: object) -> None:
            # run_app calls its ``print`` once the app has started (model loaded) and the socket serves.
            log.info("listening", url=f"http://{config.host}:{port}", port=port)

        web.run_app(app, sock=sock, print=listening, access_log=None)
    except ModelError as exc:
        log.error("model_unusable", error=str(exc))
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
