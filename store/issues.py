"""Issues a run's phases report, counted by key: the run's index and the project backlog
read them. Recording one again adds to its count and its evidence."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import RunIssue, RunPhase, utcnow


async def record(
    session: AsyncSession,
    run_id: str,
    phase: RunPhase,
    issue: dict[str, Any],
) -> RunIssue:
    """Add or count one issue of a phase, and bring the phase's counts up to date."""
    row = (
        await session.exec(
            select(RunIssue).where(
                RunIssue.run_id == run_id,
                RunIssue.phase_id == phase.phase_id,
                RunIssue.issue_key == issue["issue_key"],
            )
        )
    ).first()
    refs = list(issue.get("evidence_refs") or [])
    if row is None:
        row = RunIssue(
            run_id=run_id,
            tier_id=phase.tier_id,
            phase_id=phase.phase_id,
            phase_index=phase.phase_index,
            issue_key=issue["issue_key"],
            severity=issue["severity"],
            source=issue.get("source") or "api_server",
            category=issue["category"],
            task_category=issue.get("task_category") or phase.task_category,
            complexity=issue.get("complexity") or phase.complexity,
            evidence_refs=refs,
        )
    else:
        row.occurrence_count += 1
        row.evidence_refs = list(dict.fromkeys([*row.evidence_refs, *refs]))[:100]
        row.updated_at = utcnow()
    session.add(row)
    await session.flush()
    counts = dict(
        (
            await session.exec(
                select(RunIssue.severity, sa.func.count())
                .where(RunIssue.run_id == run_id, RunIssue.phase_id == phase.phase_id)
                .group_by(col(RunIssue.severity))
            )
        ).all()
    )
    phase.minor_issues_count = int(counts.get("minor", 0))
    phase.major_issues_count = int(counts.get("major", 0))
    session.add(phase)
    return row
