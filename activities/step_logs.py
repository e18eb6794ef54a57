"""A step's log: its command's output copied into the file as it comes, line by line to a
sink when the step is streamed, and the finished file described for its artifact row."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from activities.processes import Heard

TAIL_BYTES = 64 * 1024
TAIL_LINE_CHARS = 500
CHUNK_BYTES = 64 * 1024
# A streamed line longer than this reaches the sink in pieces; the log keeps it whole.
MAX_LINE_BYTES = 4 * 1024 * 1024
# How long a streamed step's pipes may stay open after its leader exits (held by children).
PIPE_GRACE_S = 2.0


async def pump(
    reader: asyncio.StreamReader,
    stream: str,
    out: BinaryIO,
    line: Callable[[bytes, str], None],
    heard: Heard,
) -> None:
    """Copy a pipe to the log, line by line, and hand each line to `line` (a sink's)."""
    pending = bytearray()

    def emit(newline: bool) -> None:
        out.write(bytes(pending) + (b"\n" if newline else b""))
        line(bytes(pending), stream)
        pending.clear()

    while chunk := await reader.read(CHUNK_BYTES):
        heard.at = time.monotonic()
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending += chunk[start:end]
            emit(True)
            start = end + 1
        pending += chunk[start:]
        if len(pending) > MAX_LINE_BYTES:
            emit(False)
        out.flush()
    if pending:
        emit(False)
        out.flush()


async def close_pumps(pgid: int, pumps: list[asyncio.Task[None]]) -> None:
    """Read what is left in the pipes. Children of a finished leader that still hold them
    open are killed: the step is over."""
    _, pending = await asyncio.wait(pumps, timeout=PIPE_GRACE_S)
    if pending:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _, pending = await asyncio.wait(pending, timeout=PIPE_GRACE_S)
    for task in pending:  # a child that left the group: stop listening to it
        task.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)


# A log up to this size is read on the event loop: a thread's round trip cost more in a
# busy worker (~0.2 ms) than reading it does.
SMALL_LOG_BYTES = 64 * 1024


async def describe_log(path: Path, tail_lines: int) -> tuple[int, str, list[str]]:
    """Size, SHA-256 and the last lines of a finished log; a large one is read in a thread."""
    if path.stat().st_size <= SMALL_LOG_BYTES:  # noqa: ASYNC240 (a stat: see above)
        return describe_file(path, tail_lines)
    return await asyncio.to_thread(describe_file, path, tail_lines)


def describe_file(path: Path, tail_lines: int) -> tuple[int, str, list[str]]:
    """Size, SHA-256 and the last lines of a finished log (blocking)."""
    digest = hashlib.sha256()
    size = 0
    last = b""
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
            last = (last + chunk)[-TAIL_BYTES:]
    lines = last.decode(errors="replace").splitlines()[-tail_lines:] if tail_lines else []
    return size, digest.hexdigest(), [line[:TAIL_LINE_CHARS] for line in lines]
