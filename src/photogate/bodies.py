"""Reading request bodies: every body read has a size limit and deadlines (DESIGN §9).

Every route that reads a body reads it here. :func:`read_body` reads the WHOLE body, however
many TCP segments it comes in (one ``content.read(n)`` returns only what has arrived), refuses
more than ``limit`` bytes (413), and waits at most ``limits.read_timeout`` for each read and
``limits.upload_timeout`` for all of it (408). :func:`read_json` and :func:`read_form` decode
what it read; the multipart upload uses :class:`BodyReads` and :class:`FormBudget` itself.

A body that stalls is answered 408 and its connection closed at once (errors.py): the client
stopped sending, so nothing is gained by waiting for the rest.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable
from itertools import accumulate
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import BadRequest, PayloadTooLarge, RequestTimeout
from .keys import GATEWAY

if sys.version_info >= (3, 11):  # noqa: UP036 - python_requires is >= 3.10
    from asyncio import timeout as _timeout
else:  # aiohttp's own dependency there
    from async_timeout import timeout as _timeout

T = TypeVar("T")

#: Deepest nesting of arrays and objects a JSON body may have (json.loads recurses).
MAX_JSON_DEPTH = 32
#: Most fields a form (urlencoded, or the multipart upload's non-file parts) may have.
MAX_FORM_FIELDS = 32
#: Longest value of one form field, in bytes.
MAX_FIELD_BYTES = 1024
#: A JSON body's size limit unless its route names another (a token, a node's registration).
JSON_LIMIT = 16 * 1024

#: A JSON string, to its closing quote or, unterminated, to the end (one pass, no backtracking).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


class BodyReads:
    """Each read of a request body within ``read_timeout`` s, all within ``total`` s (slow-loris).

    Wrap every awaited read in it: ``chunk = await reads(request.content.read(n))``. aiohttp's
    own parse errors in the body (a multipart header line over its limit, a malformed chunk, a
    multipart body without its boundary) become a 400."""

    def __init__(self, read_timeout: float, total: float, *, again: str = "send the request again") -> None:
        self.read_timeout = read_timeout
        self.total = total
        self.again = again
        self.deadline = time.monotonic() + total

    @classmethod
    def of(cls, request: web.Request, *, again: str = "send the request again") -> BodyReads:
        limits = request.app[GATEWAY].config.limits
        return cls(limits.read_timeout, limits.upload_timeout, again=again)

    async def __call__(self, read: Awaitable[T]) -> T:
        left = self.deadline - time.monotonic()
        try:
            # A timeout scope, not wait_for: no task is made for each read of the body.
            async with _timeout(max(min(self.read_timeout, left), 0.001)):
                return await read
        except asyncio.TimeoutError:  # noqa: UP041 - not TimeoutError on 3.10
            if left <= self.read_timeout:
                raise RequestTimeout(f"the request took longer than {self.total:g} s to send; {self.again}",
                                     headers={"Connection": "close"}) from None
            raise RequestTimeout(f"the request body stalled for {self.read_timeout:g} s; {self.again}",
                                 headers={"Connection": "close"}) from None
        except HttpProcessingError as exc:
            raise BadRequest(f"malformed request body: {_short(exc.message)}") from None
        except ValueError as exc:  # aiohttp's multipart reader: no starting boundary, a part cut short
            raise BadRequest(f"malformed request body: {_short(exc)}") from None


def _short(text: object, limit: int = 200) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


async def read_body(request: web.Request, limit: int, *, reads: BodyReads | None = None) -> bytes:
    """The whole request body, at most ``limit`` bytes (413 above), within the deadlines."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit} bytes")
    reads = reads or BodyReads.of(request)
    content = request.content
    chunks: list[bytes] = []
    size = 0
    while chunk := await reads(content.read(limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH before json.loads recurses into it."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return
    # The brackets outside strings, in order; the deepest running sum is the nesting depth.
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON from a client: UTF-8, bounded nesting, no NaN/Infinity; else a 400."""
    _check_depth(raw)
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        # A lone surrogate escape ("\\ud800") decodes to a str nothing downstream can encode.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        raise BadRequest("malformed JSON: not valid UTF-8 text") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a number over 4300 digits, NaN
        raise BadRequest(f"malformed JSON: {_short(exc, 120)}") from None
    return value


async def read_json(request: web.Request, limit: int = JSON_LIMIT, *, allow_empty: bool = True,
                    expected: str = "a JSON object") -> dict[str, Any]:
    """The body as a JSON object, at most ``limit`` bytes; anything else is a 400 saying
    ``expected``. An empty body is ``{}`` unless ``allow_empty`` is false.

    Every route that takes a JSON body reads it here (webhook, admin API, dashboard, WeChat)."""
    raw = await read_body(request, limit)
    if not raw.strip() and allow_empty:
        return {}
    body = parse_json(raw) if raw.strip() else None
    if not isinstance(body, dict):
        raise BadRequest(f"expected {expected}")
    return body


async def read_form(request: web.Request, limit: int) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (an HTML form) as a dict, strictly UTF-8."""
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise BadRequest("send the form as application/x-www-form-urlencoded")
    raw = await read_body(request, limit)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS,
                          encoding="utf-8", errors="strict")
    except UnicodeError:
        raise BadRequest("malformed form: not valid UTF-8") from None
    except ValueError:
        raise BadRequest(f"malformed form: more than {MAX_FORM_FIELDS} fields") from None
    return dict(pairs)


class FormBudget:
    """What the non-file parts of a multipart form may add up to: at most MAX_FORM_FIELDS
    parts of at most MAX_FIELD_BYTES each, every byte of them read and counted."""

    def __init__(self, reads: BodyReads) -> None:
        self.reads = reads
        self.parts = 0

    def count_part(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_FIELDS + 1:  # the fields, and the photo
            raise BadRequest(f"too many form fields: at most {MAX_FORM_FIELDS} besides 'file'")

    async def field(self, part: BodyPartReader, name: str) -> str:
        """The whole value of one form field (however many segments it arrives in), as text."""
        chunks: list[bytes] = []
        size = 0
        # A fixed chunk size: aiohttp needs at least the boundary's length.
        while chunk := await self.reads(part.read_chunk(MAX_FIELD_BYTES + 1)):
            size += len(chunk)
            if size > MAX_FIELD_BYTES:
                raise BadRequest(f"form field {name[:64]!r} is longer than {MAX_FIELD_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace").strip()
