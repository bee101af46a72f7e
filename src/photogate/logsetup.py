"""structlog set-up: JSON lines in production, a readable console in ``--dev``.

The request id is set by :func:`request_id_middleware` and added by a processor, so
every log line of a request carries it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import sys
from typing import IO

import structlog
from aiohttp import web
from structlog.types import EventDict

from .errors import Handler

#: Keys whose values are never written to a log line, whatever the caller passed.
SECRET_KEYS = frozenset({
    "secret", "token", "node_token", "admin_token", "authorization", "password",
    "session_key", "apiv3_key", "access_token", "secret_key", "private_key",
})


#: The id of the request being handled (set by :func:`request_id_middleware`).
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("photogate_request_id", default=None)


def add_request_id(_logger: object, _name: str, event: EventDict) -> EventDict:
    rid = _REQUEST_ID.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def _redact(_logger: object, _name: str, event: EventDict) -> EventDict:
    for key in SECRET_KEYS & event.keys():
        event[key] = "***"
    return event


def use_colors(stream: IO[str]) -> bool:
    """ANSI colours only on a terminal (the quickstart's log files get plain text), and never
    with ``$NO_COLOR`` set (no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


def configure_logging(*, dev: bool = False, level: str = "info") -> None:
    """Configure structlog (and the stdlib loggers aiohttp uses) once per process."""
    numeric = logging.getLevelName(level.upper())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    if dev:
        processors += [structlog.dev.ConsoleRenderer(colors=use_colors(sys.stdout))]
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Standard output, looked up at each write (so a replaced sys.stdout is honoured).
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id (the client's ``X-Request-ID`` if sane, else a new one) to every log line."""
    incoming = request.headers.get("X-Request-ID", "")
    rid = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else secrets.token_hex(16)
    # One context variable, read only when a line is logged (cheaper than binding
    # structlog's context for every request, most of which log nothing).
    token = _REQUEST_ID.set(rid)
    try:
        response = await handler(request)
    finally:
        _REQUEST_ID.reset(token)
    response.headers["X-Request-ID"] = rid
    return response
