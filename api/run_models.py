"""What every run route shares: the run's path parameter, the scopes, the one way to load a
run or its phase (404 when missing), and the build system's `RunResponse`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth import require
from api.errors import not_found
from settings import LIMITS
from store.models import Run, RunPhase, RunTier
from store.tokens import Principal, Scope

# A run id or a phase id, in a path.
PathId = Annotated[str, Path(min_length=1, max_length=LIMITS.max_name_chars)]
Reader = Annotated[Principal, require(Scope.runs_read)]
Writer = Annotated[Principal, require(Scope.runs_write)]


async def load_run(session: AsyncSession, run_id: str) -> Run:
    run = await session.get(Run, run_id)
    if run is None:
        raise not_found("run", run_id)
    return run


async def load_phase(session: AsyncSession, run_id: str, phase_id: str) -> RunPhase:
    phase = (
        await session.exec(
            select(RunPhase).where(RunPhase.run_id == run_id, RunPhase.phase_id == phase_id)
        )
    ).first()
    if phase is None:
        raise not_found("phase", f"{run_id}/{phase_id}")
    return phase


class PhaseResponse(BaseModel):
    id: int
    phase_id: str
    run_id: str
    tier_id: str
    name: str
    description: str | None
    state: str
    task_category: str | None
    complexity: str | None
    builder_mode: str | None
    phase_index: int
    scope: dict[str, Any] | None
    tokens_used: int
    builder_attempts: int
    auditor_attempts: int
    minor_issues_count: int
    major_issues_count: int
    recommendation: str | None
    files_changed: list[str]
    lines_added: int
    lines_removed: int
    error: str | None


class TierResponse(BaseModel):
    id: int
    tier_id: str
    name: str
    state: str
    tier_index: int
    parallel: bool
    phases: list[PhaseResponse]


class RunResponse(BaseModel):
    id: str
    state: str
    safety_profile: str
    run_scope: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    tokens_used: int
    token_cap: int
    failure_reason: str | None
    tiers: list[TierResponse]
    phases: list[PhaseResponse]


async def run_response(session: AsyncSession, run: Run) -> RunResponse:
    tiers = list(
        await session.exec(
            select(RunTier).where(RunTier.run_id == run.id).order_by(col(RunTier.tier_index))
        )
    )
    phases = [
        PhaseResponse.model_validate(p, from_attributes=True)
        for p in await session.exec(
            select(RunPhase).where(RunPhase.run_id == run.id).order_by(col(RunPhase.phase_index))
        )
    ]
    return RunResponse(
        **run.model_dump(
            include={
                "id",
                "state",
                "safety_profile",
                "run_scope",
                "created_at",
                "started_at",
                "completed_at",
                "tokens_used",
                "token_cap",
            }
        ),
        failure_reason=run.error,
        tiers=[
            TierResponse(
                **t.model_dump(exclude={"run_id", "description"}),
                phases=[p for p in phases if p.tier_id == t.tier_id],
            )
            for t in tiers
        ],
        phases=phases,
    )
