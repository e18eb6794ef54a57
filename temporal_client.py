"""The one way Pilothouse connects to Temporal: the API, the worker, the CLI and tests use it."""

from __future__ import annotations

import asyncio
import time

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from settings import Settings


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )


async def connect_within(settings: Settings, seconds: float) -> Client:
    """Connect, retrying while the server starts; raises the last error at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await connect(settings)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
