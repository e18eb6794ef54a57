"""The event log: append-only, ids only grow, read by resource after an id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import Event


async def append(
    session: AsyncSession,
    resource_kind: str,
    resource_id: str,
    type: str,
    *,
    stage: str | None = None,
    status: str | None = None,
    message: str = "",
    payload: dict[str, Any] | None = None,
) -> Event:
    event = Event(
        resource_kind=resource_kind,
        resource_id=resource_id,
        type=type,
        stage=stage,
        status=status,
        message=message,
        payload=payload or {},
    )
    session.add(event)
    await session.flush()
    return event


async def after(
    session: AsyncSession, resource_id: str, after_id: int = 0, limit: int = 100
) -> Sequence[Event]:
    result = await session.exec(
        select(Event)
        .where(Event.resource_id == resource_id, col(Event.id) > after_id)
        .order_by(col(Event.id))
        .limit(limit)
    )
    return result.all()
