"""JSON answers a person can read: UTF-8 text, never ``\\u`` escapes (as photogate's)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """``web.json_response`` as UTF-8 (``ensure_ascii=False``); a lone surrogate stays a
    ``\\uXXXX`` escape (it has no UTF-8 form), so no input turns an answer into a 500."""
    body = json.dumps(data, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return web.Response(body=body, status=status, headers=headers, content_type="application/json",
                        charset="utf-8")
