"""The whole program: :func:`run` parses the arguments, runs the command and turns a
:class:`~.errors.CliError` into its message and exit status; :func:`main` is the console
script around it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO

import aiohttp

from .. import __version__
from .client import Client, settings
from .context import Command, Context
from .errors import CliError, ExitStatus
from .parser import ParserExit, build_parser


async def run(argv: Sequence[str] | None = None, stdout: IO[str] | None = None,
              env: Mapping[str, str] | None = None, stderr: IO[str] | None = None) -> int:
    """The whole CLI as a coroutine: parse ``argv``, run the command, return the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    environ = os.environ if env is None else env
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except ParserExit as exc:
        out.write(exc.out)
        err.write(exc.err)
        return exc.status
    as_json = getattr(args, "json", False)  # absent unless given: a global option's default is SUPPRESS
    command: Command = args.func
    try:
        config = settings(args, environ)
        timeout = aiohttp.ClientTimeout(total=None, connect=config.timeout, sock_read=config.timeout)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"photogate-admin/{__version__}"},
        ) as session:
            await command(Context(Client(session, config), config, out), args)
    except CliError as exc:
        if as_json:  # once: a script reads the JSON document, and stderr stays empty
            out.write(json.dumps({"error": exc.message, "exit_status": int(exc.status), **exc.data},
                                 ensure_ascii=False, indent=2) + "\n")
        else:
            err.write(f"photogate-admin: {exc.message}\n")
        return int(exc.status)
    return ExitStatus.OK


def main(argv: Sequence[str] | None = None, stdout: IO[str] | None = None,
         env: Mapping[str, str] | None = None, stderr: IO[str] | None = None) -> int:
    """The ``photogate-admin`` console script."""
    try:
        return asyncio.run(run(argv, stdout=stdout, env=env, stderr=stderr))
    except KeyboardInterrupt:
        (stderr or sys.stderr).write("photogate-admin: interrupted\n")
        return ExitStatus.INTERRUPTED
