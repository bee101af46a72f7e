"""What a command runs with: the client, the settings, and the stream it prints to."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO

from .client import Client, Settings


@dataclass
class Context:
    client: Client
    config: Settings
    stdout: IO[str]

    def emit(self, data: object, text: str) -> None:
        """The command's result: ``data`` as JSON with --json, else ``text``."""
        if self.config.json:
            self.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n")
        elif text:
            self.stdout.write(text.rstrip("\n") + "\n")

    def write(self, text: str) -> None:
        """Progress output; never mixed into --json output."""
        if not self.config.json:
            self.stdout.write(text)
            self.stdout.flush()


#: A command: what ``photogate-admin COMMAND`` runs, given its parsed arguments.
Command = Callable[[Context, argparse.Namespace], Awaitable[None]]
