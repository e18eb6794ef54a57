"""The request's database session: one per request, shared by auth and the handler."""

from __future__ import annotations

from fastapi import Request
from sqlmodel.ext.asyncio.session import AsyncSession


async def request_session(request: Request) -> AsyncSession:
    """The session that the route (api/route.py `StrictRoute`) opened for this request and
    closes once its handler has answered."""
    session: AsyncSession | None = getattr(request.state, "session", None)
    if session is None:
        raise RuntimeError(f"{request.url.path}: its route is no StrictRoute, so no session")
    return session
