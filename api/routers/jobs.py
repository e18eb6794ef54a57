"""`/api/v1/jobs`: pipeline jobs with stages and approval gates (the operator console)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import jsonpatch
import sqlalchemy as sa
from fastapi import Query, Request, status
from pydantic import BaseModel, Field, model_validator
from sqlmodel import col, select

from api import cancels, decisions
from api.auth import require
from api.deps import (
    IdempotencyKeyDep,
    SessionDep,
    TemporalDep,
)
from api.errors import ApiError, ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from api.routers.gates import GatePublic, gate_public
from api.starts import Caller, create_and_start, starter
from operator_file import OperatorConfig
from settings import LIMITS
from store.models import Decision, GateRow, Job, utcnow
from store.tokens import Principal, Scope
from strict import JsonObject, Name, Params, Patch, Strict, Text, check_json
from workflows.gate import DecisionOut, Outcome
from workflows.job_spec import JobInput, JobState, ResumeIn, ResumeOut, StageSpec, check_stages
from workflows.jobs import JobWorkflow
from workflows.step_calls import SHORT_STEP_TASK_TIMEOUT

router = strict_router(
    prefix="/api/v1",
    tags=["jobs"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)

Reader = Annotated[Principal, require(Scope.jobs_read)]
Writer = Annotated[Principal, require(Scope.jobs_write)]
Approver = Annotated[Principal, require(Scope.approvals_write)]
TERMINAL = ("completed", "failed", "canceled")


class JobCreate(Strict):
    """Either a pipeline named in the operator file, or the stages themselves."""

    pipeline: Name | None = Field(None, description="A pipeline of the operator file")
    stages: list[StageSpec] | None = Field(
        None,
        min_length=1,
        max_length=LIMITS.max_stages,
        description="Stages, when no pipeline is named",
    )
    params: Params = Field(default_factory=dict, description="Given to every stage")

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.pipeline is None) == (self.stages is None):
            raise ValueError("give either pipeline or stages")
        if self.stages is not None:
            check_stages(self.stages)
        return self


class JobPublic(BaseModel):
    id: str
    pipeline: str | None
    state: str
    stage: str | None
    stages: list[dict[str, Any]]
    params: dict[str, Any]
    owner: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    gates: list[GatePublic] = Field(default_factory=list)
    open_gate: GatePublic | None = None


class GateAction(Strict):
    """Approve or reject the open gate. Accepts the operator console's `GateAction` fields."""

    reason: Text | None = Field(None, description="Why; required to reject unless the gate says")
    notes: Text | None = Field(None, description="The console's name for `reason`")
    stage: Name | None = Field(None, description="The stage whose gate to decide")
    operator: Name | None = Field(None, description="Ignored: the token's identity decides")
    decision: Name | None = Field(None, description="Ignored: the endpoint decides")
    patch: Patch | None = Field(None, description="On reject: a params patch that resume applies")
    input: JsonObject | None = Field(None, description="Checked against the gate's schema")


class ResumeRequest(Strict):
    params: Params | None = Field(None, description="Merged into the job's params")
    patch: Patch | None = Field(None, description="A JSON Patch (RFC 6902) on the params")


class Message(BaseModel):
    message: str
    state: str | None = None


async def load_job(session: SessionDep, job_id: str) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


async def jobs_public(session: SessionDep, jobs: list[Job]) -> list[JobPublic]:
    """Jobs with their gates, read in one query for the whole list."""
    rows = await session.exec(
        select(GateRow)
        .where(col(GateRow.resource_id).in_([j.id for j in jobs]))
        .order_by(col(GateRow.opened_at))
    )
    gates: dict[str, list[GatePublic]] = {}
    for row in rows:
        gates.setdefault(row.resource_id, []).append(gate_public(row))
    public = []
    for job in jobs:
        own = gates.get(job.id, [])
        public.append(
            JobPublic(
                **job.model_dump(exclude={"stages"}),
                stages=job.stages,
                gates=own,
                open_gate=next((g for g in own if g.state == "open"), None),
            )
        )
    return public


@router.post(
    "/jobs",
    status_code=status.HTTP_201_CREATED,
    summary="Create a job",
    responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def create_job(
    body: JobCreate, request: Request, caller: Annotated[Caller, starter(Scope.jobs_write)]
) -> JobPublic:
    """Starts `JobWorkflow`. Each stage runs in order; after it, its gate opens."""
    config: OperatorConfig = request.app.state.operator
    principal = caller.principal
    if body.pipeline is not None:
        pipeline = config.pipelines.get(body.pipeline)
        if pipeline is None:
            known = ", ".join(sorted(config.pipelines)) or "none"
            raise ApiError(
                422, "UNKNOWN_PIPELINE", f"pipeline: no pipeline {body.pipeline!r} (known: {known})"
            )
        stages = pipeline.stages
    else:
        assert body.stages is not None
        stages = body.stages
    stages = config.stages_for(stages)

    job = await create_and_start(
        caller,
        body,
        kind="job",
        new_row=lambda: Job(
            id=f"job-{uuid.uuid4()}",
            pipeline=body.pipeline,
            stages=[s.model_dump(mode="json", exclude_none=True) for s in stages],
            params=body.params,
            owner=principal.name,
            # Given, not left to the model's default factories: pydantic inspects a
            # factory's signature on every call, a tenth of a millisecond per create.
            created_at=(now := utcnow()),
            updated_at=now,
        ),
        created_event={
            "status": "queued",
            "message": f"job created by {principal.name}",
            "payload": {"operator": principal.name, "pipeline": body.pipeline},
        },
        workflow=JobWorkflow.run,
        workflow_input=lambda job: JobInput(
            job_id=job.id,
            stages=job.stages,
            params=job.params,
            auto_approve_allowed=caller.settings.auto_approve,
        ),
        summary=lambda job: f"Job {job.pipeline or 'ad hoc'} by {job.owner}",
        task_timeout=SHORT_STEP_TASK_TIMEOUT,
    )
    return JobPublic(**job.model_dump())


@router.get("/jobs", summary="List jobs")
async def list_jobs(
    request: Request,
    _: Reader,
    session: SessionDep,
    params: PageQuery,
    state: Annotated[JobState | None, Query(description="Only jobs in this state")] = None,
    pipeline: Annotated[
        str | None,
        Query(max_length=LIMITS.max_name_chars, description="Only jobs of this pipeline"),
    ] = None,
) -> Page[JobPublic]:
    """Newest first, from the database (never a fan-out to Temporal)."""
    query = select(Job)
    if state:
        query = query.where(Job.state == state)
    if pipeline:
        query = query.where(Job.pipeline == pipeline)
    total = (await session.exec(select(sa.func.count()).select_from(query.subquery()))).one()
    rows = await session.exec(
        query.order_by(col(Job.created_at).desc()).offset(params.skip).limit(params.limit)
    )
    return page(request, await jobs_public(session, list(rows)), int(total), params)


@router.get("/jobs/{job_id}", summary="Get a job with its gates")
async def get_job(job_id: str, _: Reader, session: SessionDep) -> JobPublic:
    [job] = await jobs_public(session, [await load_job(session, job_id)])
    return job


async def _open_gate(session: SessionDep, job_id: str, stage: str | None) -> GateRow:
    query = select(GateRow).where(GateRow.resource_id == job_id)
    if stage:
        query = query.where(GateRow.stage == stage)
    rows = list(await session.exec(query.order_by(col(GateRow.opened_at).desc())))
    open_gate = next((g for g in rows if g.state == "open"), None)
    if open_gate is not None:
        return open_gate
    if rows:
        raise ApiError(409, "GATE_ALREADY_DECIDED", f"gate {rows[0].id} is already {rows[0].state}")
    # No gate at all: say whether the job is missing, once, off the decision's hot path.
    await load_job(session, job_id)
    where = f" for stage {stage!r}" if stage else ""
    raise ApiError(409, "GATE_NOT_OPEN", f"job {job_id} has no open gate{where}")


def patched(
    job: Job, params: dict[str, Any] | None, patch: dict[str, Any] | list[Any] | None
) -> dict[str, Any]:
    """The job's params with `params` merged in and `patch` applied: still an object, and
    within the bounds a job's params have, or a 422."""
    result: Any = {**job.params, **(params or {})}
    if patch is not None:
        ops = patch if isinstance(patch, list) else [patch]
        try:
            result = jsonpatch.apply_patch(result, ops)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, "INVALID_PATCH", f"patch: {exc}") from None
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ApiError(422, "INVALID_PATCH", f"patch: cannot apply: {exc}") from None
    if not isinstance(result, dict):
        raise ApiError(422, "INVALID_PATCH", "patch: the params must stay a JSON object")
    try:
        check_json(result, LIMITS.max_params_bytes)
    except ValueError as exc:
        raise ApiError(422, "INVALID_PATCH", f"patch: the patched params: {exc}") from None
    return result


async def _decide(
    job_id: str,
    action: GateAction,
    outcome: Outcome,
    principal: Principal,
    session: SessionDep,
    temporal: TemporalDep,
    key: str | None,
) -> DecisionOut:
    gate: GateRow | None = None
    if key:
        # A retried request goes to the gate its first try decided, open or not.
        earlier = await session.get(Decision, f"{job_id}/{key}")
        if earlier is not None:
            gate = await session.get(GateRow, earlier.gate_id)
    gate = gate or await _open_gate(session, job_id, action.stage)
    data = action.input
    if action.patch is not None:
        # Checked now, on the params the job has now, not when the job resumes.
        patched(await load_job(session, job_id), None, action.patch)
        data = {**(data or {}), "patch": action.patch}
    return await decisions.decide(
        temporal,
        session,
        gate,
        outcome,
        principal.name,
        reason=action.reason or action.notes,
        data=data,
        idempotency_key=key,
    )


DECIDE_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "No open gate, already decided, or decided twice"},
    422: {"model": ErrorBody, "description": "Reason missing or input not matching the schema"},
}


@router.post("/jobs/{job_id}/approve", summary="Approve the open gate", responses=DECIDE_ERRORS)
async def approve(
    job_id: str,
    principal: Approver,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
    action: GateAction | None = None,
) -> DecisionOut:
    """The job goes on to its next stage once the gate has its approvals. The answer comes
    once the decision is on record."""
    return await _decide(
        job_id, action or GateAction(), "approve", principal, session, temporal, key
    )


@router.post("/jobs/{job_id}/reject", summary="Reject the open gate", responses=DECIDE_ERRORS)
async def reject(
    job_id: str,
    principal: Approver,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
    action: GateAction | None = None,
) -> DecisionOut:
    """The job pauses at the gate; `resume` runs the stage again. The answer comes once the
    decision is on record."""
    return await _decide(
        job_id, action or GateAction(), "reject", principal, session, temporal, key
    )


@router.post(
    "/jobs/{job_id}/resume",
    summary="Resume a paused job",
    responses={409: {"model": ErrorBody, "description": "The job is not paused"}},
)
async def resume(
    job_id: str,
    principal: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
    body: ResumeRequest | None = None,
) -> ResumeOut:
    """Runs the rejected stage again, with the params patched, and opens its gate again."""
    job = await load_job(session, job_id)
    if job.state != "paused":
        raise ApiError(409, "JOB_NOT_PAUSED", f"job {job_id} is {job.state}, not paused")
    body = body or ResumeRequest()
    patch = body.patch
    if body.params is None and patch is None:
        # The console's reject-with-patch: a bare resume applies the rejection's patch.
        rejection = (
            await session.exec(
                select(Decision)
                .where(Decision.resource_id == job_id, Decision.outcome == "reject")
                .order_by(col(Decision.created_at).desc())
            )
        ).first()
        if rejection is not None and rejection.input:
            patch = rejection.input.get("patch")
    params = None
    if body.params is not None or patch is not None:
        params = patched(job, body.params, patch)
    handle = temporal.get_workflow_handle(job_id)
    return await decisions.updating(
        handle.execute_update(
            JobWorkflow.resume,
            ResumeIn(by=principal.name, params=params),
            id=key or f"resume-{uuid.uuid4()}",
        )
    )


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a job",
    responses={409: {"model": ErrorBody, "description": "The job has already ended"}},
)
async def cancel(
    job_id: str, principal: Writer, session: SessionDep, temporal: TemporalDep
) -> Message:
    """Kills the running step's process group; the job ends `canceled`. A job whose
    workflow cannot take the request (its task keeps failing) is terminated, and a job
    whose workflow ended without saying so is recorded as ended: `state` says which."""
    job = await load_job(session, job_id)
    if job.state in TERMINAL:
        raise ApiError(409, "JOB_ALREADY_ENDED", f"job {job_id} is already {job.state}")
    state = await cancels.cancel(session, temporal, "job", job_id, principal.name)
    message = "cancel requested" if state == "canceling" else f"job {state}"
    return Message(message=message, state=state)
