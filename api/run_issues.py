"""Issues that phases report, indexed the build system's two ways: one run's issues by key
(`run_index_entry`), and every run's by key with their age (`project_backlog_entry`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import RunIssue

# The build system's backlog ages an issue by the runs it persists through; from this many
# runs on, it is no longer just open but asks for a cleanup.
CLEANUP_AFTER_RUNS = 3
_RANK = {"minor": 0, "major": 1}


class IssueIndexEntry(BaseModel):
    category: str
    severity: str
    effective_severity: str
    first_phase_index: int
    last_phase_index: int
    occurrence_count: int
    seen_in_tiers: list[str]
    seen_in_phases: list[str]


class IssueIndex(BaseModel):
    run_id: str
    issues_by_key: dict[str, IssueIndexEntry]


class BacklogEntry(BaseModel):
    category: str
    base_severity: str
    age_in_runs: int = Field(description="Runs the issue was seen in")
    age_in_tiers: int = Field(description="Tiers (of any run) the issue was seen in")
    first_seen_run_id: str | None
    last_seen_run_id: str
    last_seen_at: datetime
    seen_in_tiers: list[str]
    status: str = Field(
        description=f"`open`; `needs_cleanup` once seen in {CLEANUP_AFTER_RUNS} runs"
    )


class Backlog(BaseModel):
    project_id: str = Field(description="Pilothouse serves one project: `default`")
    issues_by_key: dict[str, BacklogEntry]


def _worst(severities: Iterable[str]) -> str:
    return max(severities, key=lambda s: _RANK.get(s, -1))


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


async def issue_index(session: AsyncSession, run_id: str) -> IssueIndex:
    rows = list(
        await session.exec(
            select(RunIssue)
            .where(RunIssue.run_id == run_id)
            .order_by(col(RunIssue.phase_index), col(RunIssue.id))
        )
    )
    by_key: dict[str, list[RunIssue]] = {}
    for row in rows:
        by_key.setdefault(row.issue_key, []).append(row)
    index = {}
    for key, seen in by_key.items():
        worst = _worst(r.severity for r in seen)
        index[key] = IssueIndexEntry(
            category=seen[-1].category,
            severity=worst,
            effective_severity=worst,
            first_phase_index=min(r.phase_index for r in seen),
            last_phase_index=max(r.phase_index for r in seen),
            occurrence_count=sum(r.occurrence_count for r in seen),
            seen_in_tiers=_unique(r.tier_id for r in seen),
            seen_in_phases=_unique(r.phase_id for r in seen),
        )
    return IssueIndex(run_id=run_id, issues_by_key=index)


async def backlog(session: AsyncSession) -> Backlog:
    # Only the columns the backlog needs, oldest first: the first row of a key is its first
    # sighting.
    rows = await session.exec(
        select(  # type: ignore[call-overload]
            RunIssue.issue_key,
            RunIssue.run_id,
            RunIssue.tier_id,
            RunIssue.category,
            RunIssue.severity,
            RunIssue.updated_at,
        ).order_by(col(RunIssue.created_at), col(RunIssue.id))
    )
    seen: dict[str, list[tuple[str, str, str, str, datetime]]] = {}
    for key, run_id, tier_id, category, severity, updated_at in rows:
        seen.setdefault(key, []).append((run_id, tier_id, category, severity, updated_at))
    entries = {}
    for key, sightings in seen.items():
        last = max(sightings, key=lambda s: s[4])
        runs = _unique(s[0] for s in sightings)
        entries[key] = BacklogEntry(
            category=last[2],
            base_severity=_worst(s[3] for s in sightings),
            age_in_runs=len(runs),
            age_in_tiers=len({(s[0], s[1]) for s in sightings}),
            first_seen_run_id=sightings[0][0],
            last_seen_run_id=last[0],
            last_seen_at=last[4],
            seen_in_tiers=_unique(s[1] for s in sightings),
            status="needs_cleanup" if len(runs) >= CLEANUP_AFTER_RUNS else "open",
        )
    return Backlog(project_id="default", issues_by_key=entries)
