"""The request's database session: one per request, shared by auth and the handler."""

from __future__ import annotations

from fastapi import Request
from sqlmodel.ext.asyncio.session import AsyncSession


async def request_session(request: Request) -> AsyncSession:
    """The session that the route (api/route.py `StrictRoute`) opened for this request and
    closes once its handler has answered."""
    session: AsyncSession = request.state.session
    return session
