"""Rate limits per client (the calling token), in fixed windows, kept in each API process.

Every answer of a limited route carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
`X-RateLimit-Reset` (when the window ends, in epoch seconds); past the limit it is a 429
with `Retry-After`. With several API processes each counts on its own.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import Depends, Response

from api.auth import current_principal
from api.errors import ApiError
from store.tokens import Principal


class RateLimit:
    def __init__(self, name: str, limit: int, per_seconds: int) -> None:
        self.name = name
        self.limit = limit
        self.per_seconds = per_seconds
        self._windows: dict[str, tuple[int, int]] = {}

    def take(self, client: str) -> tuple[bool, int, int]:
        """Count one call of `client`: allowed, calls left, and when the window resets."""
        window = int(time.time() // self.per_seconds)
        start, used = self._windows.get(client, (window, 0))
        if start != window:
            start, used = window, 0
            # Old windows of other clients go too, so the map stays as small as the traffic.
            self._windows = {c: w for c, w in self._windows.items() if w[0] == window}
        reset = (start + 1) * self.per_seconds
        if used >= self.limit:
            return False, 0, reset
        self._windows[client] = (start, used + 1)
        return True, self.limit - used - 1, reset

    def dependency(self) -> Any:
        async def check(
            response: Response, principal: Annotated[Principal, Depends(current_principal)]
        ) -> None:
            allowed, left, reset = self.take(principal.token_id)
            headers = {
                "X-RateLimit-Limit": str(self.limit),
                "X-RateLimit-Remaining": str(left),
                "X-RateLimit-Reset": str(reset),
            }
            if not allowed:
                wait = max(1, math.ceil(reset - time.time()))
                raise ApiError(
                    429,
                    "RATE_LIMITED",
                    f"{self.name}: at most {self.limit} per {self.per_seconds} s; "
                    f"retry in {wait} s",
                    headers | {"Retry-After": str(wait)},
                )
            response.headers.update(headers)

        return Depends(check)
