"""API keys in the gateway's aiohttp app: :func:`setup_keys` installs the admission policy
(keys in front of the open or WeChat policy) and the admin key routes, and opens the key
records once the store is open."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..access import ACCESS, ADMISSION, OPEN_ACCESS, GatewayAccess
from ..gateway import Gateway
from .routes import routes
from .service import ApiKeys


def setup_keys(app: web.Application, gateway: Gateway) -> None:
    """Call after ``setup_wechat``: the keys sit in front of whatever login policy it installed."""
    cfg = gateway.config
    access = GatewayAccess(app.get(ACCESS, OPEN_ACCESS), cfg.access, cfg.server.trusted_proxies)
    app[ADMISSION] = access
    app.add_routes(routes)

    async def run(_app: web.Application) -> AsyncIterator[None]:
        # Runs after the gateway's own context: its store is open.
        records = gateway.backend.open_key_records()
        await records.create_schema()
        access.keys = ApiKeys(records)
        try:
            yield
        finally:
            access.keys = None

    app.cleanup_ctx.append(run)
