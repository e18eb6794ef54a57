"""A small SSE reader for tests: frames as (event, id, data) in arrival order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Frame:
    event: str | None
    id: int | None
    data: dict[str, Any] | None
    comment: str | None = None


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    event: str | None = None
    ident: int | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Frame(None, None, None, comment=line[1:].strip())
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("id:"):
            ident = int(line[3:].strip())
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and (data or event):
            yield Frame(event, ident, json.loads("\n".join(data)) if data else None)
            event, ident, data = None, None, []
