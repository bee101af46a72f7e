"""Domain exceptions and the one middleware that turns them into JSON errors."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError

from .jsonbody import encode, json_response

log = structlog.get_logger("photogate.errors")


class PhotogateError(Exception):
    """Base of every error a client may see. ``status`` is the HTTP status code."""

    status = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        #: Fields the JSON error body carries beside ``success``, ``error`` and ``message``.
        self.fields: dict[str, Any] = {}


class BadRequest(PhotogateError):
    status = 400


class Unauthorized(PhotogateError):
    status = 401


class Forbidden(PhotogateError):
    status = 403


class NotFound(PhotogateError):
    status = 404


class Conflict(PhotogateError):
    status = 409


class NodeIdentityConflict(Conflict):
    """A registration would take over another node (DESIGN §9 "Identity"): see identity.py."""

    def __init__(self, message: str, *, holder: str, reason: str) -> None:
        super().__init__(message)
        self.holder = holder
        self.reason = reason


class RequestTimeout(PhotogateError):
    """The client stopped sending its request body (slow-loris)."""

    status = 408


class PayloadTooLarge(PhotogateError):
    status = 413


class UnsupportedMediaType(PhotogateError):
    status = 415


class TooManyRequests(PhotogateError):
    status = 429


class ServiceUnavailable(PhotogateError):
    status = 503


class StoreUnavailable(ServiceUnavailable):
    """The shared state store (Redis) cannot be reached: nothing can be read or accepted now.

    It answers 503 with ``Retry-After``; the gateway reconnects by itself once Redis is back.
    """

    RETRY_AFTER = 5

    @classmethod
    def from_error(cls, exc: BaseException, *, url: str = "") -> StoreUnavailable:
        where = f" at {url}" if url else ""
        return cls(
            f"服务暂时不可用，请稍后重试 (the gateway cannot reach its state store, Redis{where}: "
            f"{type(exc).__name__}; try again in a few seconds)",
            headers={"Retry-After": str(cls.RETRY_AFTER)},
        )


class StorageFull(ServiceUnavailable):
    """The gateway's disk is full: nothing new can be stored now. 503 with ``Retry-After``."""

    RETRY_AFTER = 30

    def __init__(self, message: str = "the gateway's storage is full: nothing new can be stored now; try again later",
                 *, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def storage_full(exc: BaseException) -> bool:
    """A full disk, as a file write (ENOSPC, EDQUOT) or SQLite ("database or disk is full") reports it."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


class ClosingResponse(web.Response):
    """An answer after which the connection closes at once, once the answer is written.

    For a client that stopped sending its body (408): aiohttp would otherwise wait up to its
    lingering time for the rest of the body before closing."""

    _closing: web.BaseRequest | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._closing = request
        return await super().prepare(request)

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        protocol = self._closing.protocol if self._closing is not None else None
        if protocol is not None:
            protocol.force_close()  # the transport sends what it holds, then closes


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(message: str) -> dict[str, Any]:
    """Every error's JSON body, wherever it is built: ``error`` (photogate's clients) and
    ``message`` (what the original gateway's web app shows) carry the same text; ``success``
    is false, as in the original's answers."""
    return {"success": False, "error": message, "message": message}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render domain errors, aiohttp's own HTTP errors and crashes as :func:`error_body`."""
    try:
        return await handler(request)
    except PhotogateError as exc:
        if exc.headers.get("Connection") == "close":
            return ClosingResponse(body=encode(error_body(exc.message)), status=exc.status,
                                   headers=exc.headers, content_type="application/json")
        return json_response({**error_body(exc.message), **exc.fields}, status=exc.status, headers=exc.headers)
    except HttpProcessingError as exc:  # aiohttp's parser, on a body a handler read itself
        return json_response(error_body(f"malformed request: {str(exc.message)[:200]}"), status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in {"content-type", "content-length"}}
        return json_response(error_body(message), status=exc.status, headers=headers)
    except Exception as exc:
        if storage_full(exc):  # every write path: a full disk is a 503 to retry later, never a 500
            log.error("storage_full", path=request.path, error=str(exc))
            full = StorageFull()
            return json_response(error_body(full.message), status=full.status, headers=full.headers)
        log.exception("unhandled_error", path=request.path)
        return json_response(error_body("internal error; see the gateway log"), status=500)
