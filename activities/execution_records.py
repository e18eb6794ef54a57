"""Records of a task definition's executions: more `records.*` activities, kept apart from
`activities/records.py` only for its size.

An execution that a Temporal Schedule starts (its own firing, the UI's "trigger", or
`temporal schedule trigger`) never passes through the API, so its workflow writes its own
row first. Both are safe to retry: a row or a report already there is left as it is.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlmodel import col, select
from temporalio import activity

from store import events
from store.engine import Database
from store.models import Artifact, Task

REPORT_STAGE = "report"


class ExecutionRecord(BaseModel):
    task_id: str
    definition_id: str
    owner: str
    prompt: str
    repo_url: str | None = None
    key_name: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    trace_id: str
    trigger: str
    started_at: datetime


class ReportIn(BaseModel):
    task_id: str
    definition_name: str
    prompt: str
    result: str | None
    usage: dict[str, Any] = Field(default_factory=dict)
    finished_at: datetime


class ExecutionRecords:
    def __init__(self, db: Database, artifacts_dir: Path) -> None:
        self.db = db
        self.artifacts_dir = artifacts_dir

    @activity.defn(name="records.execution")
    async def execution(self, r: ExecutionRecord) -> None:
        """The execution's task row and its first event, unless they exist; the definition's
        `last_run_at` moves to this start (never back)."""
        async with self.db.session() as session:
            if await session.get(Task, r.task_id) is None:
                session.add(
                    Task(
                        id=r.task_id,
                        repo_url=r.repo_url,
                        prompt=r.prompt,
                        config=r.config,
                        key_name=r.key_name,
                        trace_id=r.trace_id,
                        owner=r.owner,
                        definition_id=r.definition_id,
                        trigger=r.trigger,
                        created_at=r.started_at,
                    )
                )
                await events.append(
                    session,
                    "task",
                    r.task_id,
                    "task_created",
                    status="pending",
                    message=f"execution of {r.definition_id} started by its schedule",
                    payload={"definition_id": r.definition_id, "trigger": r.trigger},
                )
            await session.exec(
                sa.update(Task)
                .where(
                    col(Task.id) == r.definition_id,
                    sa.or_(col(Task.last_run_at).is_(None), col(Task.last_run_at) < r.started_at),
                )
                .values(last_run_at=r.started_at)
            )
            await session.commit()

    @activity.defn(name="records.report")
    async def report(self, r: ReportIn) -> str:
        """The execution's result as a markdown artifact, downloadable from the task's
        artifact routes. Answers the artifact's id."""
        relative = Path(r.task_id) / "report.md"
        async with self.db.session() as session:
            found = (
                await session.exec(
                    select(Artifact).where(
                        Artifact.resource_id == r.task_id, Artifact.kind == "report"
                    )
                )
            ).first()
            if found is not None:
                return found.id
            text = render_report(r).encode()
            path = self.artifacts_dir / relative
            await asyncio.to_thread(_write, path, text)
            artifact = Artifact(
                resource_kind="task",
                resource_id=r.task_id,
                stage=REPORT_STAGE,
                kind="report",
                path=str(relative),
                content_type="text/markdown",
                size_bytes=len(text),
                checksum_sha256=hashlib.sha256(text).hexdigest(),
            )
            session.add(artifact)
            await events.append(
                session,
                "task",
                r.task_id,
                "report.created",
                stage=REPORT_STAGE,
                status="completed",
                message="report written",
                payload={"artifact_id": artifact.id, "format": "markdown"},
            )
            await session.commit()
            return artifact.id


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def render_report(r: ReportIn) -> str:
    usage = "\n".join(f"| {k} | {v} |" for k, v in sorted(r.usage.items()))
    return (
        f"# {r.definition_name}\n\n"
        f"Execution `{r.task_id}`, finished {r.finished_at.isoformat()}\n\n"
        f"## Prompt\n\n{r.prompt}\n\n"
        f"## Result\n\n{r.result or '(no result)'}\n\n"
        f"## Usage\n\n| measure | value |\n|---|---|\n{usage}\n"
    )
