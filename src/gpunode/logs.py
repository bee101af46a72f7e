"""structlog set-up: JSON lines in production, readable console lines with ``--dev``."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO

import structlog


def use_colors(stream: IO[str]) -> bool:
    """ANSI colours only on a terminal (a log file or a pipe gets plain text), and never with
    ``$NO_COLOR`` set (no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


def configure_logging(*, dev: bool = False, level: str = "info") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=use_colors(sys.stderr))
        if dev else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
