"""aiohttp's own answers to requests it cannot parse, as JSON ``{"error": ...}``.

A request line or header over aiohttp's limits (a 100,000-character task id), a malformed
header, bytes that are not HTTP at all: aiohttp answers these itself, before any middleware
runs (``RequestHandler.handle_error``), in plain text. aiohttp offers no hook for that answer,
so :func:`json_protocol_errors` wraps ``RequestHandler.handle_error`` once per process; the
wrapper answers JSON for the applications that asked for it (the gateway) and leaves every
other aiohttp server in the process (a gpunode, a test's fake node) as it was.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .errors import error_body
from .jsonbody import encode

log = structlog.get_logger("photogate.protocol")

#: Set on an application whose protocol errors are answered as JSON.
JSON_PROTOCOL_ERRORS = web.AppKey("json_protocol_errors", bool)

_original_handle_error = RequestHandler.handle_error


def _message(status: int, exc: BaseException | None) -> str:
    if isinstance(exc, LineTooLong):
        return (f"request line or header too long (over {exc.args[1]} bytes): check the URL; "
                "send long values in the body")
    if isinstance(exc, HttpProcessingError) or status < 500:
        detail = str(exc.message if isinstance(exc, HttpProcessingError) else exc or "")[:200]
        return f"malformed HTTP request{': ' + detail if detail else ''}"
    return "internal error; see the gateway log"


def _wants_json(handler: RequestHandler) -> bool:
    manager = handler._manager  # the web.Server; its request_handler is the application's _handle
    app = getattr(getattr(manager, "request_handler", None), "__self__", None)
    return isinstance(app, web.Application) and app.get(JSON_PROTOCOL_ERRORS, False)


def _handle_error(self: RequestHandler, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                  message: str | None = None) -> web.StreamResponse:
    if not _wants_json(self) or request.writer.output_size > 0:
        return _original_handle_error(self, request, status, exc, message)
    if status >= 500:
        log.error("unhandled_protocol_error", status=status, error=repr(exc)[:300])
    else:  # someone's malformed request: no traceback in the log for it
        log.info("malformed_http_request", status=status, error=_message(status, exc), client=request.remote)
    resp = web.Response(body=encode(error_body(_message(status, exc))), status=status,
                        content_type="application/json")
    resp.force_close()
    return resp


def json_protocol_errors(app: web.Application) -> None:
    """Answer aiohttp's own protocol errors on ``app``'s connections as JSON errors."""
    app[JSON_PROTOCOL_ERRORS] = True
    if RequestHandler.handle_error is not _handle_error:
        RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
