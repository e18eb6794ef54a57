"""Resource rows of every family (job, and the ones to come), updated by kind."""

from __future__ import annotations

from typing import Any

from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import ApprovalRequest, Job, utcnow

TABLES: dict[str, type[SQLModel]] = {"job": Job, "approval": ApprovalRequest}


async def set_fields(session: AsyncSession, kind: str, resource_id: str, **values: Any) -> None:
    """Set columns on a resource's row in the caller's transaction; unknown rows are left."""
    table = TABLES.get(kind)
    row = await session.get(table, resource_id) if table else None
    if row is None:
        return
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.add(row)
