"""The API's link to Temporal: connects in the background, so the API starts without it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio.client import Client

from api.errors import ApiError
from settings import Settings
from temporal_client import connect


class TemporalLink:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error = "not connected yet"

    async def start(self) -> None:
        try:
            self._client = await asyncio.wait_for(connect(self._settings), timeout=5)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._task = asyncio.create_task(self._retry())

    async def _retry(self) -> None:
        while self._client is None:
            await asyncio.sleep(0.25)
            try:
                self._client = await connect(self._settings)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ApiError(
                503, "TEMPORAL_UNAVAILABLE", f"Temporal is unreachable: {self.last_error}"
            )
        return self._client

    async def problem(self) -> str | None:
        """None when Temporal answers a health check, else what is wrong."""
        if self._client is None:
            return f"unreachable: {self.last_error}"
        try:
            await self._client.service_client.check_health(timeout=timedelta(seconds=2))
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}: {exc}"
        return None
