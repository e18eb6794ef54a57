"""What a run's readers see, where the build system's contract puts it: the list of runs,
one run, its progress, its errors, its issues and its files. All read the database (and the
run's directory), never Temporal, so they answer whether or not a worker runs."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import Query, Response
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api import run_errors, run_files
from api.deps import SessionDep, SettingsDep
from api.errors import ErrorBody
from api.route import strict_router
from api.run_errors import RunErrors, RunErrorSummary
from api.run_files import ArtifactIndex, BrowserArtifacts
from api.run_issues import Backlog, IssueIndex, backlog, issue_index
from api.run_models import PathId, Reader, RunResponse, load_run, run_response
from settings import LIMITS
from store.models import Run, RunPhase, utcnow

router = strict_router(
    tags=["runs"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)

# A phase no longer ahead of the run; the first phase by index that is not is the current one.
PASSED = ("COMPLETE", "SKIPPED")


class RunSummary(BaseModel):
    id: str
    state: str
    created_at: datetime | None
    tokens_used: int
    token_cap: int
    phases_total: int
    phases_completed: int = Field(description="Phases `COMPLETE`")
    current_phase_name: str | None = Field(description="First phase by index not yet passed")


class RunsPage(BaseModel):
    runs: list[RunSummary]
    total: int
    limit: int
    offset: int


class PhaseProgress(BaseModel):
    phase_id: str
    name: str
    state: str
    phase_index: int
    tokens_used: int
    builder_attempts: int


class RunProgress(BaseModel):
    run_id: str
    state: str
    started_at: datetime | None
    completed_at: datetime | None
    elapsed_seconds: int | None = Field(description="(completed_at or now) - started_at")
    tokens_used: int
    token_cap: int
    phases_total: int
    phases_completed: int = Field(description="`COMPLETE`")
    phases_in_progress: int = Field(description="`EXECUTING`")
    phases_pending: int = Field(description="`QUEUED`")
    phases: list[PhaseProgress]


@router.get("/runs", summary="List runs, newest first")
async def list_runs(
    _: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=LIMITS.max_int)] = 0,
) -> RunsPage:
    total = (await session.exec(select(sa.func.count()).select_from(Run))).one()
    runs = list(
        await session.exec(
            select(Run)
            .order_by(col(Run.created_at).desc(), col(Run.id).desc())
            .offset(offset)
            .limit(limit)
        )
    )
    ids = [r.id for r in runs]
    # One grouped query for the page's phase counts, one for its current phases.
    completed = sa.func.sum(sa.case((col(RunPhase.state) == "COMPLETE", 1), else_=0))
    counts = {
        run_id: (int(n), int(done or 0))
        for run_id, n, done in await session.exec(
            select(RunPhase.run_id, sa.func.count(), completed)
            .where(col(RunPhase.run_id).in_(ids))
            .group_by(col(RunPhase.run_id))
        )
    }
    first = (
        select(RunPhase.run_id, sa.func.min(RunPhase.phase_index).label("idx"))
        .where(col(RunPhase.run_id).in_(ids), col(RunPhase.state).not_in(PASSED))
        .group_by(col(RunPhase.run_id))
        .subquery()
    )
    current: dict[str, str] = {}
    for run_id, name in await session.exec(
        select(RunPhase.run_id, RunPhase.name)
        .join(
            first,
            sa.and_(
                col(RunPhase.run_id) == first.c.run_id, col(RunPhase.phase_index) == first.c.idx
            ),
        )
        .order_by(col(RunPhase.id))
    ):
        current.setdefault(run_id, name)
    return RunsPage(
        runs=[
            RunSummary(
                id=r.id,
                state=r.state,
                created_at=r.created_at,
                tokens_used=r.tokens_used or 0,
                token_cap=r.token_cap,
                phases_total=counts.get(r.id, (0, 0))[0],
                phases_completed=counts.get(r.id, (0, 0))[1],
                current_phase_name=current.get(r.id),
            )
            for r in runs
        ],
        total=int(total),
        limit=limit,
        offset=offset,
    )


@router.get("/runs/{run_id}", summary="Read a run: its tiers and phases")
async def get_run(run_id: PathId, _: Reader, session: SessionDep) -> RunResponse:
    return await run_response(session, await load_run(session, run_id))


@router.get("/runs/{run_id}/progress", summary="A run's progress, phase by phase")
async def get_progress(run_id: PathId, _: Reader, session: SessionDep) -> RunProgress:
    run = await load_run(session, run_id)
    phases = list(
        await session.exec(
            select(RunPhase).where(RunPhase.run_id == run_id).order_by(col(RunPhase.phase_index))
        )
    )
    elapsed = None
    if run.started_at is not None:
        elapsed = max(0, int(((run.completed_at or utcnow()) - run.started_at).total_seconds()))
    return RunProgress(
        run_id=run.id,
        state=run.state,
        started_at=run.started_at,
        completed_at=run.completed_at,
        elapsed_seconds=elapsed,
        tokens_used=run.tokens_used,
        token_cap=run.token_cap,
        phases_total=len(phases),
        phases_completed=sum(p.state == "COMPLETE" for p in phases),
        phases_in_progress=sum(p.state == "EXECUTING" for p in phases),
        phases_pending=sum(p.state == "QUEUED" for p in phases),
        phases=[PhaseProgress.model_validate(p, from_attributes=True) for p in phases],
    )


@router.get("/runs/{run_id}/errors", summary="A run's errors, from its event log")
async def get_errors(run_id: PathId, _: Reader, session: SessionDep) -> RunErrors:
    """Failed phases, steps and runs, and every `…_failed` event, oldest first."""
    await load_run(session, run_id)
    return await run_errors.errors(session, run_id)


@router.get("/runs/{run_id}/errors/summary", summary="A run's errors, counted by phase and type")
async def get_error_summary(run_id: PathId, _: Reader, session: SessionDep) -> RunErrorSummary:
    await load_run(session, run_id)
    return await run_errors.summary(session, run_id)


@router.get("/runs/{run_id}/issues/index", summary="A run's issues, by key")
async def get_issue_index(run_id: PathId, _: Reader, session: SessionDep) -> IssueIndex:
    await load_run(session, run_id)
    return await issue_index(session, run_id)


@router.get("/project/issues/backlog", summary="Every run's issues, by key, with their age")
async def get_backlog(_: Reader, session: SessionDep) -> Backlog:
    return await backlog(session)


@router.get("/runs/{run_id}/artifacts/index", summary="List the files in a run's directory")
async def artifacts_index(
    run_id: PathId, _: Reader, session: SessionDep, settings: SettingsDep
) -> ArtifactIndex:
    """Every file under the run's directory, recursively; none if it has no directory yet."""
    await load_run(session, run_id)
    return await asyncio.to_thread(run_files.index, settings.artifacts_dir, run_id)


@router.get(
    "/runs/{run_id}/artifacts/file",
    summary="Read a file of a run's directory",
    # A plain `Response`: its errors are documented as JSON, only the 200 as text.
    response_class=Response,
    responses={
        200: {
            "description": "The file as UTF-8 text, cut at 1 MiB with a `[TRUNCATED: …]` line; "
            "headers `X-Artifact-Original-Size`, `X-Artifact-Truncated`, `X-Artifact-Redacted` "
            "(and `X-Artifact-Redaction-Count` when it is)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        400: {"model": ErrorBody, "description": "The path could lead outside the directory"},
    },
)
async def artifact_file(
    run_id: PathId,
    _: Reader,
    session: SessionDep,
    settings: SettingsDep,
    path: Annotated[
        str,
        Query(
            max_length=3 * LIMITS.max_path_chars,  # room for a path encoded twice
            description="Relative to the run's directory, parts separated by `/`",
        ),
    ],
    redact: Annotated[bool, Query(description="Hide credentials: keys, tokens, passwords")] = False,
) -> Response:
    run_files.safe_parts(path)  # a bad path is a 400 whether or not the run exists
    await load_run(session, run_id)
    base = run_files.run_dir(settings.artifacts_dir, run_id)
    # The file system is read in a thread: a large file or a slow disk holds no other request.
    content = await asyncio.to_thread(run_files.read, base, path)
    text, redactions = run_files.redact(content.text) if redact else (content.text, 0)
    headers = {
        "X-Artifact-Original-Size": str(content.original_size),
        "X-Artifact-Truncated": "true" if content.truncated else "false",
        "X-Artifact-Redacted": "true" if redactions else "false",
        # The file may hold HTML: a browser must show it as text, never render it.
        "X-Content-Type-Options": "nosniff",
    }
    if redactions:
        headers["X-Artifact-Redaction-Count"] = str(redactions)
    return Response(text, media_type="text/plain; charset=utf-8", headers=headers)


@router.get("/runs/{run_id}/browser/artifacts", summary="List a run's screenshots and pages")
async def browser_artifacts(
    run_id: PathId, _: Reader, session: SessionDep, settings: SettingsDep
) -> BrowserArtifacts:
    """`.png`, `.jpg`, `.jpeg`, `.gif` and `.webp` files are screenshots; `.html` files pages."""
    await load_run(session, run_id)
    return await asyncio.to_thread(run_files.browser, settings.artifacts_dir, run_id)
