"""WeChat in the gateway's aiohttp app.

:func:`setup_wechat` is all ``create_app`` calls: when ``wechat.appid`` is set it adds the
``/api/wechat/`` routes, installs the WeChat access policy (login, credits, owner-only
tasks) and owns the service's life in ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from ..access import ACCESS
from ..gateway import Gateway
from .access import WechatAccess
from .routes import routes
from .service import WECHAT, WechatService


def setup_wechat(app: web.Application, gateway: Gateway) -> None:
    cfg = gateway.config.wechat
    if not cfg.appid:
        return
    service = WechatService(cfg)  # a key file that cannot be read fails here, at start
    access = WechatAccess(service, cfg)
    app[WECHAT] = service
    app[ACCESS] = access
    app.add_routes(routes)

    async def run(_app: web.Application) -> AsyncIterator[None]:
        # Runs after the gateway's own context: its store and dispatcher exist.
        async with service.running(gateway.backend.open_wechat_records()):
            gateway.dispatcher.access = access
            await service.refund_failed_tasks()  # tasks that failed while we were down
            reconciler = asyncio.create_task(service.run_reconciler(), name="wechat-reconciler")
            try:
                yield
            finally:
                reconciler.cancel()
                await asyncio.gather(reconciler, return_exceptions=True)

    app.cleanup_ctx.append(run)
