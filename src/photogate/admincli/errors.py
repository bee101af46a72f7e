"""Exit statuses and the expected failures that end a ``photogate-admin`` run with one.

Every module of the CLI raises these; :func:`photogate.admincli.program.run` turns one into
a message on stderr (or a JSON document with ``--json``) and its exit status.
"""

from __future__ import annotations

import enum
from typing import Any


class ExitStatus(enum.IntEnum):
    OK = 0
    REFUSED = 1  # the gateway answered with an error
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: a message for the operator, an exit status, a JSON form."""

    status = ExitStatus.REFUSED

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class UsageError(CliError):
    status = ExitStatus.USAGE


class Refused(CliError):
    status = ExitStatus.REFUSED


class Unreachable(CliError):
    status = ExitStatus.UNREACHABLE
