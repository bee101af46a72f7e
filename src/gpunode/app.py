"""``create_app(config)``: wiring only — keys, routes, middleware, cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web

from . import metrics, views
from .config import NodeConfig
from .inference import Engine
from .keys import CONFIG, ENGINE, HTTP, IP_SOURCE, REGISTRAR, REGISTRATION_TASK
from .model import SRModel, count_gpus
from .registration import IpSource, Registrar, fixed_ip, load_node_key, route_ip, url_ip
from .simulate import SimEngine

log = structlog.get_logger("gpunode.app")


def load_models(config: NodeConfig) -> list[SRModel]:
    """One session per GPU (one inference worker each), or one on CPU."""
    gpus = count_gpus(config.cpu_only)
    n = config.slots or max(1, gpus)
    return [SRModel(config.model_file, cpu_only=config.cpu_only, threads=config.threads,
                    device_id=(i % gpus) if gpus else 0) for i in range(n)]


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[HTTP] = session
        yield


def _engine_ctx(models: list[SRModel] | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        if config.simulate_speed > 0:
            app[ENGINE] = SimEngine(speed=config.simulate_speed, slots=config.slots or 1,
                                    queue_size=config.queue_size, jitter=config.simulate_jitter,
                                    output=config.simulate_output, max_pixels=config.max_input_pixels)
            yield
            return
        loaded = models
        if loaded is None:
            loaded = await asyncio.get_running_loop().run_in_executor(None, load_models, config)
        engine = Engine(loaded, tile_size=config.tile_size, tile_overlap=config.tile_overlap,
                        queue_size=config.queue_size, max_input_pixels=config.max_input_pixels,
                        max_output_pixels=config.max_output_pixels)
        app[ENGINE] = engine
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
    return ctx


async def _registration_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.gateway_url:
        log.info("standalone", token_set=bool(config.token))
        yield
        return
    engine = app[ENGINE]
    ip_source = app.get(IP_SOURCE)
    if ip_source is None:
        if config.advertise_ip:
            ip_source = fixed_ip(config.advertise_ip)
        elif config.ip_url:
            ip_source = url_ip(app[HTTP], config.ip_url)
        else:
            ip_source = route_ip(config.gateway_url)
    node_key = await asyncio.get_running_loop().run_in_executor(None, load_node_key, config.state_path)
    registrar = Registrar(
        app[HTTP], gateway_url=config.gateway_url, secret=config.secret, port=config.port, node_key=node_key,
        ip_source=ip_source, slots=engine.slots, queue_size=engine.queue_size,
        model=engine.model.info.name, scale=engine.model.info.scale,
        ip_check_interval=config.ip_check_interval, gateway_check_interval=config.gateway_check_interval,
        backoff_initial=config.register_backoff_initial, backoff_max=config.register_backoff_max,
    )
    app[REGISTRAR] = registrar
    app[REGISTRATION_TASK] = asyncio.create_task(registrar.run(), name="gpunode-registration")
    yield
    await _leave_fleet(app)


async def _leave_fleet(app: web.Application) -> None:
    """Stop the registration loop and unregister. Runs at shutdown, before in-flight
    requests are awaited, so the gateway stops sending work first; again at cleanup
    (a no-op by then)."""
    task = app.get(REGISTRATION_TASK)
    registrar = app.get(REGISTRAR)
    if task is None or registrar is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if registrar.token is not None:
        await registrar.unregister()


def create_app(config: NodeConfig, *, models: list[SRModel] | None = None,
               ip_source: IpSource | None = None) -> web.Application:
    """The node app. ``models`` lets tests share one loaded session; ``ip_source`` overrides
    where the advertised IP comes from (an ``async () -> str``)."""
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[views.error_middleware])
    app[CONFIG] = config
    if ip_source is not None:
        app[IP_SOURCE] = ip_source
    app.cleanup_ctx.append(_http_ctx)
    app.cleanup_ctx.append(_engine_ctx(models))
    app.cleanup_ctx.append(_registration_ctx)
    app.on_shutdown.append(_leave_fleet)
    app.router.add_post("/v1/enhance", views.enhance)
    app.router.add_get("/health", views.health)
    app.router.add_get("/info", views.info)
    metrics.setup(app)  # GET /metrics
    return app
