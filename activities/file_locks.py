"""An exclusive lock on a file, for work that two processes (or two activities of one) must
not do at once on one directory: fetching a mirror, snapshotting a work tree."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

LOCK_POLL_S = 0.05


@contextlib.asynccontextmanager
async def locked(path: Path) -> AsyncIterator[None]:
    """Hold `path` locked, across processes and within one (flock locks belong to an open
    file). Polled, so a canceled waiter leaves no thread behind holding it."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing releases the lock
