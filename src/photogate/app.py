"""``create_app(config)``: wiring only — keys, routes, middlewares, cleanup_ctx, CORS."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import hdrs, web

from . import admin_api, api, webhook
from .apikeys.app import setup_keys
from .config import Config
from .errors import error_middleware
from .gateway import Gateway
from .keys import GATEWAY
from .lifecycle import gateway_contexts
from .logsetup import request_id_middleware
from .metrics.http import setup_metrics
from .protocol_errors import json_protocol_errors
from .ratelimit import RATE_LIMITS, RateLimits, rate_limit_middleware
from .storage.factory import Backend
from .ui import setup_ui
from .wechat.app import setup_wechat


def create_app(config: Config, *, config_path: str | None = None, rng: random.Random | None = None) -> web.Application:
    # Multipart uploads are streamed, not buffered, so client_max_size only bounds the
    # small JSON bodies of the webhook and admin APIs.
    # The rate limiter sits outside the error middleware: it counts the final 401/403s.
    app = web.Application(middlewares=[request_id_middleware, rate_limit_middleware, error_middleware],
                          client_max_size=1024 * 1024, handler_args=_connection_limits(config))
    json_protocol_errors(app)  # a request aiohttp cannot parse also gets {"error": ...}
    gateway = Gateway(config, config_path=config_path, rng=rng)  # a bad strategy fails here, at start
    app[GATEWAY] = gateway
    app[RATE_LIMITS] = RateLimits(config.rate_limit)

    app.cleanup_ctx.extend(gateway_contexts(gateway, on_backend=lambda backend: _share_limits(app, backend)))
    app.add_routes(api.routes)
    app[api.STATUS_BODIES] = api.StatusBodies()
    app.add_routes(webhook.routes)
    app.add_routes(admin_api.routes)
    setup_wechat(app, gateway)  # /api/wechat/ and its access policy, when wechat.appid is set
    setup_keys(app, gateway)  # API keys in front of that policy; /api/v1/admin/keys
    # GET /metrics; counts requests by route and status
    setup_metrics(app, gateway.metrics, gateway, token=config.metrics.token)
    setup_ui(app)  # / (try-it page), /dashboard (admin), /static/
    _setup_cors(app, config)
    return app


def _share_limits(app: web.Application, backend: Backend) -> None:
    """Several gateways: the rate limits' buckets live in the shared store, counted by all."""
    if backend.shared is not None:
        app[RATE_LIMITS].share(backend.shared)


def _connection_limits(config: Config) -> dict[str, float]:
    """Deadlines of every connection, in the app so that they hold however it is served."""
    return {
        # Also bounds a client still sending its request headers (slow-loris), and idle keep-alives.
        "keepalive_timeout": config.limits.read_timeout,
        # After an answer given before the body was read (401, 413), how long the rest of the
        # body is read and dropped before the connection closes (aiohttp's default: 10 s).
        "lingering_time": config.limits.read_timeout,
    }


def _setup_cors(app: web.Application, config: Config) -> None:
    # No credentials: the public API authenticates by bearer token, never by cookie.
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]  # aiohttp_cors ships no type hints
        allow_credentials=False,
        expose_headers=("X-Request-ID", "Content-Disposition", "Retry-After", "X-Task-ID", "X-Task-Status"),
        allow_headers=("Content-Type", "Authorization", "X-Request-ID"), max_age=3600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in config.cors.origins})
    for route in list(app.router.routes()):
        if route.resource is not None and route.resource.canonical.startswith("/api/"):
            cors.add(route)
    # aiohttp-cors looks at every response; only a request with an Origin header can need
    # CORS headers (CORS 6.1.1), so the others (status polls from the mini program, curl,
    # nodes) skip its route lookups.
    signal = app.on_response_prepare
    for i, callback in enumerate(signal):
        if getattr(callback, "__name__", "") == "_on_response_prepare":
            signal[i] = _with_origin_only(callback)


def _with_origin_only(callback: Callable[[web.Request, web.StreamResponse], Awaitable[object]]) -> Callable[
        [web.Request, web.StreamResponse], Awaitable[None]]:
    async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if hdrs.ORIGIN in request.headers:
            await callback(request, response)

    return on_response_prepare
