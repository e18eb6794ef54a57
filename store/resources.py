"""Resource rows of every family (job, and the ones to come), updated by kind."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import ApprovalRequest, Job, utcnow

TABLES: dict[str, type[SQLModel]] = {"job": Job, "approval": ApprovalRequest}


async def set_fields(session: AsyncSession, kind: str, resource_id: str, **values: Any) -> None:
    """Set columns on a resource's row in the caller's transaction; unknown rows are left.
    One UPDATE, no load: workflows call this on the way to their next step."""
    table = TABLES.get(kind)
    if table is None:
        return
    await session.exec(
        sa.update(table).where(sa.column("id") == resource_id).values(**values, updated_at=utcnow())
    )
