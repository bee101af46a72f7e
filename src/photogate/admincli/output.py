"""How ``photogate-admin`` prints: tables, times, durations, sizes, and secret masking.

Pure functions of their arguments (and the clock, for :func:`ago`); no I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import secret_names


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["—" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def ago(timestamp: float | None, now: float | None = None) -> str:
    if not timestamp:
        return "never"
    seconds = max((now or time.time()) - timestamp, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def when(timestamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else None


def size(nbytes: int | None) -> str:
    if nbytes is None:
        return "—"
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < 1024 * 1024:
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / 1024 / 1024:.1f} MiB"


def duration(seconds: float | None) -> str:
    """A duration as a person reads it: ``45 ms``, ``17.8 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d 5 h``."""
    if seconds is None:
        return "—"
    seconds = max(float(seconds), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f}".removesuffix(".0") + " s"
    whole = int(seconds)
    for big, small, big_unit, small_unit in ((86400, 3600, "d", "h"), (3600, 60, "h", "min"), (60, 1, "min", "s")):
        if whole >= big:
            high, low = divmod(whole, big)
            low //= small
            return f"{high} {big_unit} {low} {small_unit}" if low else f"{high} {big_unit}"
    raise AssertionError("unreachable")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def on_off(value: object) -> str:
    return "on" if value else "off"


def offline(count: object) -> str:
    """", N offline" when some nodes are offline (unregistered, kept with their ids)."""
    return f", {count} offline" if isinstance(count, int) and count > 0 else ""


def short(text: str | None, width: int) -> str | None:
    """``text`` cut to ``width`` characters, the last one an ellipsis."""
    return text if text is None or len(text) <= width else text[: width - 1] + "…"


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` → ``[("a.b", 1)]``; an empty mapping stays a value."""
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(flatten(value, name + "."))
        else:
            items.append((name, value))
    return items


def scalar(value: object) -> str:
    """A config value as written after ``key =``: a string as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


#: The config's secret field names (``photogate.config.secret_names``); a key containing one is masked.
SECRET_WORDS = tuple(sorted(secret_names()))


def masked(data: Any, key: str = "") -> Any:
    """Belt and braces over the gateway's own masking: a credential is never printed."""
    if isinstance(data, Mapping):
        return {k: masked(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(v, key) for v in data]
    if data and isinstance(data, str) and any(word in key.lower() for word in SECRET_WORDS):
        return "***"
    return data
