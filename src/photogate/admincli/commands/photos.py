"""Photos through the public API: enhance (submit, and with --wait save the result),
wait (a progress bar until a task finishes), download (save a completed result)."""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import time
from pathlib import Path
from typing import Any

import aiohttp

from ..context import Context
from ..errors import Refused, UsageError
from ..output import size

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def _eta_words(status: dict[str, Any]) -> str:
    """``eta 12.5s`` (and when a queued task should start), or nothing when unknown."""
    eta = status.get("eta_seconds")
    if status.get("status") not in ("queued", "processing") or not isinstance(eta, (int, float)):
        return ""
    start = status.get("estimated_start_seconds")
    if status.get("status") == "queued" and isinstance(start, (int, float)):
        return f"starts in {start:.0f}s, eta {eta:.0f}s"
    return f"eta {eta:.1f}s"


class Progress:
    """A redrawn bar on a terminal; one line per change of state otherwise."""

    WIDTH = 30

    def __init__(self, ctx: Context, task_id: str) -> None:
        self.ctx = ctx
        self.task_id = task_id
        isatty = getattr(ctx.stdout, "isatty", None)  # any text stream a test passes in
        self.tty = bool(isatty and isatty())
        self.started = time.monotonic()
        self.last: tuple[object, object] | None = None

    def update(self, status: dict[str, Any]) -> None:
        state, server = status.get("status"), status.get("server_id")
        label = f"{state} on {server}" if state == "processing" and server else str(state)
        position = status.get("queue_position")
        if state == "queued" and isinstance(position, int):
            label = f"queued, #{position}"
        elapsed = time.monotonic() - self.started
        eta = _eta_words(status)
        if self.tty:
            fraction = min(max(float(status.get("progress") or 0.0), 0.0), 1.0)
            filled = round(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            # Padded: a shorter line must cover the longer one it redraws.
            self.ctx.write(f"\r[{bar}] {fraction:4.0%}  {label:<20} {elapsed:5.1f}s  {eta:<18}")
        elif (state, server) != self.last:
            self.ctx.write(f"{elapsed:6.1f}s  task {self.task_id} {label}{'  ' + eta if eta else ''}\n")
        self.last = (state, server)

    def done(self) -> None:
        if self.tty:
            self.ctx.write("\n")


async def cmd_enhance(ctx: Context, args: argparse.Namespace) -> None:
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"enhance: no such file: {path}")
    if args.out is not None and not args.out.is_dir() and not args.out.parent.is_dir():
        raise UsageError(f"enhance: --out {args.out}: no such directory: {args.out.parent}")
    form = aiohttp.FormData()
    for key, value in (("scale", args.scale), ("format", args.format), ("quality", args.quality)):
        if value:
            form.add_field(key, str(value))
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UsageError(f"enhance: cannot read {path}: {exc.strerror}") from None
    with handle:  # aiohttp streams it; the gateway checks the real format
        form.add_field("file", handle, filename=path.name, content_type=content_type)
        submitted = await ctx.client.call("POST", "/api/v1/enhance", data=form)
    task_id = str(submitted.get("task_id"))
    if not (args.wait or args.out):
        ctx.emit(submitted, f"submitted task {task_id} ({submitted.get('status')}); "
                            f"`photogate-admin wait {task_id}` waits for it and `download {task_id}` saves it "
                            "(or use --wait)")
        return

    status = await _wait_completed(ctx, task_id, args.max_wait)
    out, nbytes, mime = await _download(ctx, task_id, args.out, folder=path.parent, stem=f"{path.stem}_enhanced")
    ctx.emit({**status, "saved_to": str(out), "bytes": nbytes, "content_type": mime},
             f"saved the enhanced image to {out} ({mime}, {size(nbytes)})")


async def cmd_wait(ctx: Context, args: argparse.Namespace) -> None:
    task_id = args.task_id
    status = await _wait_completed(ctx, task_id, args.max_wait)
    ctx.emit(status, f"task {task_id} completed on {status.get('server_id') or '?'}; "
                     f"save it with `photogate-admin download {task_id}`")


async def cmd_download(ctx: Context, args: argparse.Namespace) -> None:
    out_arg: Path | None = args.out
    if out_arg is not None and not out_arg.is_dir() and not out_arg.parent.is_dir():
        raise UsageError(f"download: -o {out_arg}: no such directory: {out_arg.parent}")
    out, nbytes, mime = await _download(ctx, args.task_id, out_arg, folder=Path.cwd(),
                                        stem=f"enhanced_{args.task_id}")
    ctx.emit({"task_id": args.task_id, "saved_to": str(out), "bytes": nbytes, "content_type": mime},
             f"saved the enhanced image to {out} ({mime}, {size(nbytes)})")


async def _wait_completed(ctx: Context, task_id: str, max_wait: float) -> dict[str, Any]:
    """Wait (with a progress bar) for ``completed``; a failed task is a refusal (exit 1)."""
    status = await _wait_finished(ctx, task_id, max_wait, Progress(ctx, task_id))
    if status.get("status") == "failed":
        raise Refused(f"task {task_id} failed: {status.get('error')}", task=status)
    return status


async def _wait_finished(ctx: Context, task_id: str, max_wait: float, progress: Progress) -> dict[str, Any]:
    deadline = time.monotonic() + max_wait
    pause = 0.05
    try:
        while True:
            status = await ctx.client.call("GET", f"/api/v1/status/{task_id}")
            progress.update(status)
            if status.get("status") in ("completed", "failed"):
                return status
            if time.monotonic() > deadline:
                raise Refused(f"task {task_id} is still {status.get('status')} after {max_wait:g} s; "
                              f"wait again with `photogate-admin wait {task_id}`", task=status)
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 1.0)
    finally:
        progress.done()


async def _download(ctx: Context, task_id: str, out: Path | None, *, folder: Path, stem: str) -> tuple[Path, int, str]:
    """Stream the result to ``out`` (a file, or a folder for ``stem.EXT``; default ``folder``),
    through ``.part``: a file that exists under its name is whole."""
    loop = asyncio.get_running_loop()
    async with ctx.client.open("GET", f"/api/v1/download/{task_id}") as resp:
        mime = resp.content_type
        if out is None or out.is_dir():
            out = (out or folder) / f"{stem}.{EXTENSIONS.get(mime, 'bin')}"
        partial = out.with_name(out.name + ".part")
        try:
            handle = await loop.run_in_executor(None, partial.open, "wb")
        except OSError as exc:
            raise UsageError(f"cannot write {partial}: {exc.strerror}", task_id=task_id) from None
        nbytes, complete = 0, False
        try:
            with ctx.client.transport_errors():
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    await loop.run_in_executor(None, handle.write, chunk)
                    nbytes += len(chunk)
            complete = True
        finally:
            await loop.run_in_executor(None, handle.close)
            if not complete:
                partial.unlink(missing_ok=True)
    await loop.run_in_executor(None, partial.replace, out)
    return out, nbytes, mime
