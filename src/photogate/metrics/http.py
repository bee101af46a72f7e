"""``GET /metrics`` and the middleware that counts every answered request.

Both get what they need passed in (the metrics, the live state's source, the scrape
token); neither reads the gateway from the app.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..errors import Handler, Unauthorized
from ..netutil import bearer, credential_refused, same_secret
from .events import GatewayMetrics
from .live import LiveCollector, SnapshotSource


def _route(request: web.Request) -> str:
    # The route template, never the raw path: task ids and scanners' junk must not
    # become label values.
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


def metrics_middleware(metrics: GatewayMetrics) -> Middleware:
    """Count every answered request by route template, method and status."""

    # The labelled children, looked up once per (route, method, status): labels() is not free
    # and this runs on every request. Route templates and methods are few (unmatched paths
    # share one label), so the dict stays small.
    children: dict[tuple[str, str, int], Counter] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            key = (_route(request), request.method, status)
            child = children.get(key)
            if child is None:
                child = metrics.http_requests.labels(key[0], key[1], str(status))
                if len(children) < 1024:
                    children[key] = child
            child.inc()

    return middleware


def metrics_handler(collector: LiveCollector, *, token: str) -> Handler:
    """``GET /metrics``; with a ``token``, only for ``Authorization: Bearer <token>``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if token and not same_secret(bearer(request), token):
            credential_refused(request)
            raise Unauthorized("metrics token required (Authorization: Bearer ...)",
                               headers={"WWW-Authenticate": "Bearer"})
        body = await collector.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    return handler


def setup_metrics(app: web.Application, metrics: GatewayMetrics, source: SnapshotSource, *, token: str) -> None:
    """``GET /metrics`` (live state from ``source``; open when ``token`` is empty) and the
    request-counting middleware (outermost, so it sees final statuses)."""
    collector = LiveCollector(metrics, source)
    metrics.registry.register(collector)
    app.middlewares.insert(0, metrics_middleware(metrics))
    app.router.add_get("/metrics", metrics_handler(collector, token=token))
