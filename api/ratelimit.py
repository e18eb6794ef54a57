"""Rate limits per client (the calling token), in sliding windows, kept in each API process.

Every answer of a limited route carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
`X-RateLimit-Reset` (when a call frees up, in epoch seconds); past the limit it is a 429
with `Retry-After`. With several API processes each counts on its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
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
        # Each client's calls within the last window, oldest first: at most `limit` each.
        self._calls: dict[str, deque[float]] = {}

    def take(self, client: str) -> tuple[bool, int, int]:
        """Count one call of `client` against the window that ends now (a sliding window:
        any `per_seconds` holds at most `limit` calls): allowed, calls left, and when the
        oldest counted call leaves the window (epoch seconds)."""
        now = time.time()
        calls = self._calls.setdefault(client, deque())
        while calls and calls[0] <= now - self.per_seconds:
            calls.popleft()
        if len(calls) >= self.limit:
            return False, 0, math.ceil(calls[0] + self.per_seconds)
        calls.append(now)
        if len(self._calls) > 10_000:
            # Forget clients with nothing in their window, so the map stays as small as
            # the traffic.
            self._calls = {
                c: q for c, q in self._calls.items() if q and q[-1] > now - self.per_seconds
            }
        return True, self.limit - len(calls), math.ceil(calls[0] + self.per_seconds)

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
