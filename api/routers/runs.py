"""Runs, where the build system's contract puts them: `POST /runs/start`, the executor's
calls on a phase, and cancel. What runs read is in `run_reads.py` and `dashboard.py`."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Body, Query, status
from pydantic import BaseModel, ValidationError
from sqlmodel import select

from api import cancels, decisions
from api.deps import IdempotencyKeyDep, SessionDep, TemporalDep
from api.errors import ApiError, ErrorBody
from api.ratelimit import RateLimit
from api.repositories import check_repository, check_workdir
from api.route import strict_router
from api.run_models import PathId, RunResponse, Writer, load_phase, load_run, run_response
from api.starts import Caller, create_and_start, starter
from settings import LIMITS
from store.models import Run, RunIssue, RunPhase, RunTier, utcnow
from store.tokens import Scope
from strict import Text, explain
from workflows.run_results import (
    AuditorResult,
    BuilderResult,
    IssueReport,
    PhaseAnswer,
    PhaseCall,
    PhaseStatusUpdate,
    Severity,
    Source,
)
from workflows.run_spec import RunSpec
from workflows.runs import RunInput, RunWorkflow
from workflows.step_calls import SHORT_STEP_TASK_TIMEOUT

router = strict_router(
    tags=["runs"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)

START_LIMIT = RateLimit("POST /runs/start", limit=10, per_seconds=60)
# A run's ends in the words `api/cancels.py` uses.
RUN_ENDS: dict[cancels.End, str] = {
    "canceled": "DONE_CANCELED",
    "failed": "DONE_FAILED_ENVIRONMENT",
    "completed": "DONE_SUCCESS",
}


def is_over(state: str) -> bool:
    return state.startswith("DONE_")


@router.post(
    "/runs/start",
    status_code=status.HTTP_201_CREATED,
    summary="Start a run",
    responses={
        409: {"model": ErrorBody, "description": "A run with this run_id exists"},
        429: {"model": ErrorBody, "description": "More than 10 starts a minute"},
        503: {"model": ErrorBody, "description": "Temporal is unreachable, or new work is paused"},
    },
)
async def start_run(
    body: RunSpec,
    caller: Annotated[Caller, starter(Scope.runs_write)],
    # After the caller: a start refused while paused does not count against the limit.
    _: Annotated[None, START_LIMIT.dependency()],
) -> RunResponse:
    """Starts `RunWorkflow`: tiers in order, each phase built, audited, maybe gated."""
    principal = caller.principal
    spec = body.run
    # As for tasks: what another token fetched is not handed over by naming its path.
    check_repository(spec.repository, caller.settings, "run.repository")
    check_workdir(spec.workdir, caller.settings)
    assert spec.token_cap and spec.max_phases and spec.max_duration_minutes
    now = utcnow()
    run = await create_and_start(
        caller,
        body,
        kind="run",
        new_row=lambda: Run(
            id=spec.run_id,
            state="RUN_CREATED",
            safety_profile=spec.safety_profile,
            run_scope=spec.run_scope,
            token_cap=spec.token_cap or 0,
            max_phases=spec.max_phases or 0,
            max_duration_minutes=spec.max_duration_minutes or 0,
            workdir=spec.workdir or "",
            repository=spec.repository,
            owner=principal.name,
            started_at=now,
        ),
        children=lambda run: [
            *(
                RunTier(
                    run_id=run.id,
                    tier_id=t.tier_id,
                    tier_index=t.tier_index,
                    name=t.name,
                    description=t.description,
                    parallel=t.parallel,
                )
                for t in body.tiers
            ),
            *(
                RunPhase(
                    run_id=run.id,
                    phase_id=p.phase_id,
                    phase_index=p.phase_index,
                    tier_id=p.tier_id,
                    name=p.name,
                    description=p.description,
                    task_category=p.task_category,
                    complexity=p.complexity,
                    builder_mode=p.builder_mode,
                    scope=p.scope,
                    spec=p.model_dump(
                        mode="json", include={"builder", "auditor", "gate", "max_attempts", "risk"}
                    ),
                )
                for p in body.phases
            ),
        ],
        created_event={
            "status": "RUN_CREATED",
            "message": f"run created by {principal.name}: "
            f"{len(body.tiers)} tiers, {len(body.phases)} phases",
            "payload": {"operator": principal.name, "token_cap": spec.token_cap},
        },
        workflow=RunWorkflow.run,
        workflow_input=lambda run: RunInput(
            run_id=run.id,
            spec=body.model_dump(mode="json"),
            auto_approve_allowed=caller.settings.auto_approve,
        ),
        summary=lambda run: f"Run {run.id} by {run.owner}",
        task_timeout=SHORT_STEP_TASK_TIMEOUT,
    )
    return await run_response(caller.session, run)


async def _running(session: SessionDep, run_id: str) -> Run:
    """The run, which must not have ended: an executor's call on it would reach nothing."""
    run = await load_run(session, run_id)
    if is_over(run.state):
        raise ApiError(409, "RUN_ENDED", f"run {run_id} is already {run.state}")
    return run


async def _call(
    session: SessionDep, temporal: TemporalDep, key: str | None, run_id: str, call: PhaseCall
) -> PhaseAnswer:
    # The workflow knows its phases and refuses what they do not wait for; the database is
    # read only to say why Temporal refused (no such run, or one that has ended), which
    # keeps a round trip off the way of every executor's result.
    handle = temporal.get_workflow_handle(run_id)
    try:
        return await decisions.updating(
            handle.execute_update(RunWorkflow.phase, call, id=key or f"phase-{uuid.uuid4()}")
        )
    except ApiError:
        await _explain_refusal(session, run_id, call.phase_id)
        raise


async def _explain_refusal(session: SessionDep, run_id: str, phase_id: str) -> None:
    """Why Temporal refused, when the database knows better: no such run or phase (404),
    or a run that has ended (409); else the refusal stands."""
    await _running(session, run_id)
    await load_phase(session, run_id, phase_id)


def _same_ids(run_id: str, phase_id: str, body: BuilderResult | AuditorResult) -> None:
    if (body.run_id, body.phase_id) != (run_id, phase_id):
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            f"body.run_id, body.phase_id: {body.run_id}/{body.phase_id} is not "
            f"{run_id}/{phase_id}, the run and phase of the path",
        )


CALL_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The phase does not wait for this call"},
}


@router.post(
    "/runs/{run_id}/phases/{phase_id}/update_status",
    summary="Report a phase's status",
    responses=CALL_ERRORS,
)
async def update_status(
    run_id: PathId,
    phase_id: PathId,
    body: PhaseStatusUpdate,
    _: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
) -> PhaseAnswer:
    """Sets the phase's counters, and its state while it runs (`EXECUTING`, `CI_RUNNING`).
    A phase ends by its builder's and auditor's results, not by a status."""
    call = PhaseCall(phase_id=phase_id, status=body)
    return await _call(session, temporal, key, run_id, call)


@router.post(
    "/runs/{run_id}/phases/{phase_id}/builder_result",
    summary="Post a builder's result",
    responses=CALL_ERRORS,
)
async def builder_result(
    run_id: PathId,
    phase_id: PathId,
    body: BuilderResult,
    _: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
) -> PhaseAnswer:
    """For a phase whose builder is `external`, while it waits for one."""
    _same_ids(run_id, phase_id, body)
    return await _call(session, temporal, key, run_id, PhaseCall(phase_id=phase_id, builder=body))


@router.post(
    "/runs/{run_id}/phases/{phase_id}/auditor_result",
    summary="Post an auditor's result",
    responses=CALL_ERRORS,
)
async def auditor_result(
    run_id: PathId,
    phase_id: PathId,
    body: AuditorResult,
    _: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
) -> PhaseAnswer:
    """For a phase whose auditor is `external`, while it waits for one: `approve` goes on,
    `revise` builds again, `escalate` asks a human."""
    _same_ids(run_id, phase_id, body)
    return await _call(session, temporal, key, run_id, PhaseCall(phase_id=phase_id, auditor=body))


class IssueRecorded(BaseModel):
    message: str
    phase_file: dict[str, Any]
    run_index_entry: dict[str, Any]


@router.post(
    "/runs/{run_id}/phases/{phase_id}/record_issue",
    summary="Record an issue of a phase",
    responses=CALL_ERRORS,
)
async def record_issue(
    run_id: PathId,
    phase_id: PathId,
    _: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
    issue_key: Annotated[str, Query(min_length=1, max_length=LIMITS.max_name_chars)],
    severity: Annotated[Severity, Query()],
    source: Annotated[Source, Query()],
    category: Annotated[str, Query(min_length=1, max_length=LIMITS.max_name_chars)],
    task_category: Annotated[str | None, Query(max_length=LIMITS.max_name_chars)] = None,
    complexity: Annotated[str | None, Query(max_length=LIMITS.max_name_chars)] = None,
    evidence_refs: Annotated[
        list[Text] | None, Body(max_length=LIMITS.max_list_items, description="A JSON array")
    ] = None,
) -> IssueRecorded:
    """The build system's shape: scalars in the query, `evidence_refs` as the body."""
    try:
        issue = IssueReport.model_validate(
            {
                "issue_key": issue_key,
                "severity": severity,
                "source": source,
                "category": category,
                "task_category": task_category,
                "complexity": complexity,
                "evidence_refs": evidence_refs or [],
            }
        )
    except ValidationError as exc:
        raise ApiError(422, "VALIDATION_ERROR", f"query: {explain(exc)}") from None
    await _call(session, temporal, key, run_id, PhaseCall(phase_id=phase_id, issue=issue))
    # Read after the Update: the issue is recorded, whatever the run has done since.
    phase = await load_phase(session, run_id, phase_id)
    await session.refresh(phase)
    rows = list(
        await session.exec(
            select(RunIssue).where(RunIssue.run_id == run_id, RunIssue.phase_id == phase_id)
        )
    )
    mine = next(r for r in rows if r.issue_key == issue_key)
    state = (
        "has_major_issues"
        if phase.major_issues_count
        else "has_minor_issues"
        if phase.minor_issues_count
        else "no_issues"
    )
    return IssueRecorded(
        message=f"issue {issue_key} recorded",
        phase_file={
            "phase_id": phase_id,
            "tier_id": phase.tier_id,
            "issues": [r.model_dump(mode="json", exclude={"id"}) for r in rows],
            "minor_issue_count": phase.minor_issues_count,
            "major_issue_count": phase.major_issues_count,
            "issue_state": state,
        },
        run_index_entry={
            "category": mine.category,
            "severity": mine.severity,
            "effective_severity": mine.severity,
            "first_phase_index": phase.phase_index,
            "last_phase_index": phase.phase_index,
            "occurrence_count": mine.occurrence_count,
            "seen_in_tiers": [phase.tier_id],
            "seen_in_phases": [phase_id],
        },
    )


class Canceled(BaseModel):
    message: str
    state: str


@router.post(
    "/runs/{run_id}/cancel",
    summary="Cancel a run",
    responses={409: {"model": ErrorBody, "description": "The run has already ended"}},
)
async def cancel_run(
    run_id: PathId, principal: Writer, session: SessionDep, temporal: TemporalDep
) -> Canceled:
    """Stops the running builder's or auditor's process group; the run ends
    `DONE_CANCELED` and its open gates close."""
    await _running(session, run_id)
    state = await cancels.cancel(session, temporal, "run", run_id, principal.name, RUN_ENDS)
    if state == "canceling":
        return Canceled(message="cancel requested", state=state)
    return Canceled(message="run ended", state=RUN_ENDS[state])
