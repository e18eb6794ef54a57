"""Heartbeats of long activities: how a cancel reaches them and a lost worker is noticed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity

HEARTBEAT_S = 1.0


@contextlib.asynccontextmanager
async def pulse(label: str | None = None) -> AsyncIterator[None]:
    """Heartbeat an ordinary activity every `HEARTBEAT_S` while the block runs, with `label`
    (a step's stage) as details: the Temporal UI shows which step of a series runs.
    Beating from a task of its own covers what no wait of the block's own does (a kill's
    grace, the records): a heartbeat timeout there would start another attempt beside
    this one. A local activity has no heartbeat: its cancel comes straight from the
    workflow."""
    if activity.info().is_local:
        yield
        return
    details = () if label is None else (label,)

    async def beat() -> None:
        while True:
            activity.heartbeat(*details)
            await asyncio.sleep(HEARTBEAT_S)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
