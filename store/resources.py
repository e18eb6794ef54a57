"""Resource rows of every family (job, and the ones to come), updated by kind."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import ApprovalRequest, Job, Run, RunPhase, RunTier, Task, TaskIteration, utcnow

TABLES: dict[str, type[SQLModel]] = {
    "job": Job,
    "approval": ApprovalRequest,
    "run": Run,
    "task": Task,
}
# The parts of a resource that have rows of their own, by (kind, part): table, the column
# naming their resource, and their key column.
PARTS: dict[tuple[str, str], tuple[type[SQLModel], str, str]] = {
    ("run", "phase"): (RunPhase, "run_id", "phase_id"),
    ("run", "tier"): (RunTier, "run_id", "tier_id"),
    ("task", "iteration"): (TaskIteration, "task_id", "number"),
}


async def set_fields(session: AsyncSession, kind: str, resource_id: str, **values: Any) -> None:
    """Set columns on a resource's row in the caller's transaction; unknown rows are left.
    One UPDATE, no load: workflows call this on the way to their next step."""
    table = TABLES.get(kind)
    if table is None:
        return
    await session.exec(
        sa.update(table).where(sa.column("id") == resource_id).values(**values, updated_at=utcnow())
    )


async def set_parts(
    session: AsyncSession, kind: str, resource_id: str, parts: dict[str, dict[str, Any]]
) -> None:
    """Set columns on parts of a resource, named `"<part>:<id>"` (`"phase:build"`)."""
    for name, values in parts.items():
        part, _, part_id = name.partition(":")
        table, owner, key = PARTS[(kind, part)]
        if "updated_at" in table.model_fields:
            values = {**values, "updated_at": utcnow()}
        key_value: str | int = (
            int(part_id) if table.model_fields[key].annotation is int else part_id
        )
        await session.exec(
            sa.update(table)
            .where(sa.column(owner) == resource_id, sa.column(key) == key_value)
            .values(**values)
        )


async def set_ended(session: AsyncSession, kind: str, resource_id: str) -> None:
    """Stamp `completed_at` on a resource that keeps one, as it ends."""
    table = TABLES.get(kind)
    if table is not None and "completed_at" in table.model_fields:
        await session.exec(
            sa.update(table).where(sa.column("id") == resource_id).values(completed_at=utcnow())
        )
