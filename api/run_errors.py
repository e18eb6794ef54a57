"""A run's errors, read from its event log: each failure recorded there, and their counts.

An error is an event with a failed state (a phase's `FAILED`, a run's `DONE_FAILED_*`, a
step's `failed` or `timed_out`) or an event named `…_failed` (`phase_failed`)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import Event

MAX_ERRORS = 1000  # errors listed in one answer; `error_count` still counts them all
FAILED_STATES = ("FAILED", "failed", "timed_out", "TIMED_OUT")


class RunError(BaseModel):
    event_id: int
    phase_id: str | None
    type: str
    message: str
    ts: datetime


class RunErrors(BaseModel):
    run_id: str
    error_count: int
    errors: list[RunError] = Field(description=f"The latest {MAX_ERRORS}, oldest first")


class ErrorSummary(BaseModel):
    total: int
    by_phase: dict[str, int] = Field(description="Errors outside any phase count under `run`")
    by_type: dict[str, int]


class RunErrorSummary(BaseModel):
    run_id: str
    summary: ErrorSummary


def _errors_of(run_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        col(Event.resource_id) == run_id,
        sa.or_(
            col(Event.status).in_(FAILED_STATES),
            col(Event.status).startswith("DONE_FAILED", autoescape=True),
            col(Event.type).endswith("_failed", autoescape=True),
        ),
    )


async def errors(session: AsyncSession, run_id: str) -> RunErrors:
    mine = _errors_of(run_id)
    count = (await session.exec(select(sa.func.count()).select_from(Event).where(mine))).one()
    rows = list(
        await session.exec(
            select(Event).where(mine).order_by(col(Event.id).desc()).limit(MAX_ERRORS)
        )
    )
    return RunErrors(
        run_id=run_id,
        error_count=int(count),
        errors=[
            RunError(
                event_id=e.id or 0,
                phase_id=e.stage,
                type=e.type,
                message=e.message,
                ts=e.created_at,
            )
            for e in reversed(rows)
        ],
    )


async def summary(session: AsyncSession, run_id: str) -> RunErrorSummary:
    """One grouped query by phase and type; the two counts are folded from it."""
    rows = await session.exec(
        select(Event.stage, Event.type, sa.func.count())
        .where(_errors_of(run_id))
        .group_by(col(Event.stage), col(Event.type))
    )
    counts = ErrorSummary(total=0, by_phase={}, by_type={})
    for stage, kind, n in rows:
        phase = stage or "run"
        counts.total += n
        counts.by_phase[phase] = counts.by_phase.get(phase, 0) + n
        counts.by_type[kind] = counts.by_type.get(kind, 0) + n
    return RunErrorSummary(run_id=run_id, summary=counts)
