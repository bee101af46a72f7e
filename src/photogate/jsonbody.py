"""JSON answers a person can read: UTF-8 text, never ``\\u`` escapes.

Every JSON answer of the gateway is encoded here (handlers call :func:`json_response`,
the error middleware and the streams call :func:`encode`), so a message such as
``服务暂时不可用`` reaches a terminal as itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

#: ``json.dumps`` for text that goes to a person (``ensure_ascii=False``).
dumps = functools.partial(json.dumps, ensure_ascii=False)


def encode(data: Any, **kwargs: Any) -> bytes:
    """``data`` as UTF-8 JSON. A lone surrogate (a client can send ``"\\ud800"`` in JSON, and
    an error may quote it back) has no UTF-8 form: it stays a ``\\uXXXX`` escape, which is the
    same JSON, so no input can turn an answer into a 500."""
    return dumps(data, **kwargs).encode("utf-8", "backslashreplace")


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """``web.json_response`` with :func:`encode` (``application/json; charset=utf-8``)."""
    return web.Response(body=encode(data), status=status, headers=headers, content_type="application/json",
                        charset="utf-8")
