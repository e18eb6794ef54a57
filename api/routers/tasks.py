"""Coding-agent tasks (`/api/v1/tasks`): create, read, instruct, cancel, open a pull request.

Each task is a `TaskWorkflow`. Its events, SSE stream (`/stream`, in the coding-agent
system's shape) and artifacts are the shared resource routes, mounted in `api/app.py`.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Query, Request, Response, status
from sqlmodel import col, select

from api import cancels
from api.auth import require
from api.decisions import updating
from api.deps import IdempotencyKeyDep, SessionDep, TemporalDep
from api.errors import ApiError, ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.repositories import check_repository
from api.route import strict_router
from api.starts import Caller, create_and_start, starter
from api.task_definitions import DefinitionCreated, TaskBody, create_definition, task_view
from api.task_models import (
    CancelAnswer,
    CreatePrBody,
    InstructAnswer,
    InstructBody,
    PrAwaitingApproval,
    PrCreated,
    TaskCreated,
    TaskPublic,
    task_public,
)
from settings import LIMITS
from store.credentials import CredentialRef
from store.models import Key, Task, TaskIteration
from store.secrets import Secrets
from store.tokens import Principal, Scope
from workflows.definition_spec import DefinitionCreate
from workflows.iterations import InstructIn
from workflows.task_spec import (
    PullRequestAsk,
    TaskInput,
    TaskState,
)
from workflows.tasks import TaskWorkflow

router = strict_router(
    prefix="/api/v1/tasks",
    tags=["tasks"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
Reader = Annotated[Principal, require(Scope.tasks_read)]
Writer = Annotated[Principal, require(Scope.tasks_write)]
TaskId = Annotated[str, "task id"]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such task"}
}
REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The task's state does not allow it"}
}


async def load_task(session: SessionDep, task_id: str) -> Task:
    task = await session.get(Task, task_id) if len(task_id) <= LIMITS.max_name_chars else None
    if task is None:
        raise not_found("task", task_id)
    return task


async def load_run(session: SessionDep, task_id: str) -> Task:
    """A task that runs: a definition has no workflow of its own to instruct or cancel."""
    task = await load_task(session, task_id)
    if task.kind == "definition":
        raise ApiError(
            409, "NOT_A_RUN", f"task {task_id} is a definition; execute it (POST /execute)"
        )
    return task


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def create_task(
    body: TaskBody, caller: Annotated[Caller, starter(Scope.tasks_write)]
) -> TaskCreated | DefinitionCreated:
    """With `prompt`: clones the repository into a workspace of the task's own, on a branch
    `pilothouse/task-…`, and runs the agent on the prompt. Follow it at `/stream`.

    With `prompt_template`: a task definition, run by `/execute` or by its schedule
    (`schedule_cron`, a Temporal Schedule `task-schedule-<id>`)."""
    if isinstance(body, DefinitionCreate):
        return await create_definition(caller, body)
    session, settings, principal = caller.session, caller.settings, caller.principal
    if body.provider_key is not None and await session.get(Key, body.provider_key) is None:
        raise ApiError(422, "UNKNOWN_KEY", f"provider_key: no registered key {body.provider_key!r}")
    check_repository(body.repo_url, settings)
    task_id = f"task-{uuid.uuid4()}"
    credential = (
        Secrets.of(settings).encrypt(body.access_token.get_secret_value())
        if body.access_token
        else None
    )

    def ref(task: Task) -> CredentialRef | None:
        if task.credential:
            return CredentialRef(kind="task", id=task.id)
        return CredentialRef(kind="key", id=task.key_name) if task.key_name else None

    task = await create_and_start(
        caller,
        body,
        kind="task",
        new_row=lambda: Task(
            id=task_id,
            repo_url=body.repo_url,
            target_branch=body.config.target_branch,
            prompt=body.prompt,
            callback_url=body.callback_url,
            config=body.config.model_dump(mode="json", exclude_none=True),
            credential=credential,
            key_name=body.provider_key,
            trace_id=secrets.token_hex(16),
            owner=principal.name,
        ),
        created_event={
            "status": "pending",
            "message": f"task created by {principal.name}",
            "payload": {"operator": principal.name, "repo_url": body.repo_url},
        },
        workflow=TaskWorkflow.run,
        workflow_input=lambda task: TaskInput(
            task_id=task.id,
            owner=task.owner,
            repo_url=task.repo_url,
            credential=ref(task),
            prompt=task.prompt,
            callback_url=task.callback_url,
            config=task.config,
            trace_id=task.trace_id,
            idle_ttl_seconds=settings.task_idle_ttl_seconds,
            webhook_backoff_seconds=settings.webhook_backoff_seconds,
            webhook_timeout_seconds=settings.webhook_timeout_seconds,
            auto_approve_allowed=settings.auto_approve,
        ),
        summary=lambda task: f"Task on {task.repo_url or 'a scratch workspace'} by {task.owner}",
    )
    return TaskCreated(id=task.id, status=task.state, created_at=task.created_at)


@router.get("", summary="List tasks")
async def list_tasks(
    request: Request,
    _: Reader,
    session: SessionDep,
    params: PageQuery,
    state: Annotated[TaskState | None, Query(description="Only tasks in this state")] = None,
    kind: Annotated[
        Literal["run", "definition"] | None, Query(description="Only runs, or only definitions")
    ] = None,
    definition_id: Annotated[
        str | None, Query(max_length=100, description="Only this definition's executions")
    ] = None,
) -> Page[TaskPublic]:
    """Newest first, from the database: a definition's `last_run_at` is its last
    execution's start; `next_run_at` is read from the schedule on a single task's read."""
    query = select(Task)
    if state:
        query = query.where(Task.state == state)
    if kind:
        query = query.where(Task.kind == kind)
    if definition_id:
        query = query.where(Task.definition_id == definition_id)
    total = (await session.exec(select(sa.func.count()).select_from(query.subquery()))).one()
    rows = await session.exec(
        query.order_by(col(Task.created_at).desc()).offset(params.skip).limit(params.limit)
    )
    return page(request, [task_public(t) for t in rows], int(total), params)


@router.get("/{task_id}", summary="Get a task", responses=NOT_FOUND)
async def get_task(
    task_id: TaskId,
    _: Reader,
    session: SessionDep,
    temporal: TemporalDep,
    include: Annotated[
        Literal["iterations"] | None, Query(description="`iterations` adds each iteration")
    ] = None,
) -> TaskPublic:
    task = await load_task(session, task_id)
    iterations = None
    if include == "iterations":
        rows = await session.exec(
            select(TaskIteration)
            .where(TaskIteration.task_id == task_id)
            .order_by(col(TaskIteration.number))
        )
        iterations = list(rows)
    return await task_view(session, temporal, task, iterations)


@router.post(
    "/{task_id}/instruct",
    summary="Send a follow-up instruction",
    responses={**NOT_FOUND, **REFUSED},
)
async def instruct(
    task_id: TaskId,
    body: InstructBody,
    principal: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
) -> InstructAnswer:
    """Starts a new iteration in the same workspace, resuming the agent's session. Only a
    task that is `completed` or `awaiting_instruction` takes one (else 409). A retried
    request with the same `Idempotency-Key` starts nothing twice."""
    task = await load_run(session, task_id)
    if task.completed_at is not None:
        raise ApiError(409, "TASK_NOT_AWAITING", f"task {task_id} has ended ({task.state})")
    handle = temporal.get_workflow_handle(task_id)
    out = await updating(
        handle.execute_update(
            TaskWorkflow.instruct,
            InstructIn(prompt=body.prompt, by=principal.name),
            id=f"instruct-{key}" if key else f"instruct-{uuid.uuid4()}",
        )
    )
    return InstructAnswer(id=task_id, status=out.status, iteration=out.iteration)


@router.post(
    "/{task_id}/cancel",
    summary="Cancel a task",
    responses={**NOT_FOUND, **REFUSED},
)
async def cancel(
    task_id: TaskId, principal: Writer, session: SessionDep, temporal: TemporalDep
) -> CancelAnswer:
    """Kills the agent's process group (SIGTERM, then SIGKILL after the grace); the task
    ends `canceled`."""
    task = await load_run(session, task_id)
    if task.completed_at is not None:
        raise ApiError(409, "TASK_ALREADY_ENDED", f"task {task_id} has ended ({task.state})")
    state = await cancels.cancel(session, temporal, "task", task_id, principal.name)
    return CancelAnswer(
        id=task_id,
        status=state,
        message="cancel requested" if state == "canceling" else f"task {state}",
    )


@router.post(
    "/{task_id}/create-pr",
    summary="Open a pull request from the task's branch",
    responses={
        **NOT_FOUND,
        **REFUSED,
        202: {"model": PrAwaitingApproval, "description": "Waiting at the task's `pr_gate`"},
        502: {"model": ErrorBody, "description": "The push or GitHub refused"},
    },
)
async def create_pr(
    task_id: TaskId,
    body: CreatePrBody,
    principal: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    response: Response,
) -> PrCreated | PrAwaitingApproval:
    """Commits the workspace, pushes the task's branch and opens the pull request. With
    `config.pr_gate`, a gate opens first (202): nothing leaves until it is approved, and a
    rejection leaves the task `awaiting_instruction`."""
    task = await load_run(session, task_id)
    if task.completed_at is not None:
        raise ApiError(409, "TASK_NOT_READY", f"task {task_id} has ended ({task.state})")
    handle = temporal.get_workflow_handle(task_id)
    answer = await updating(
        handle.execute_update(
            TaskWorkflow.create_pr,
            PullRequestAsk(
                title=body.title,
                description=body.description,
                target_branch=body.target_branch,
                by=principal.name,
            ),
            id=f"create-pr-{uuid.uuid4()}",
        )
    )
    if answer.status == "awaiting_approval":
        assert answer.gate_id is not None
        response.status_code = status.HTTP_202_ACCEPTED
        return PrAwaitingApproval(
            branch=answer.branch,
            gate_id=answer.gate_id,
            detail="waiting for approval at the task's pr_gate; decide it at "
            f"/api/v1/approvals/{answer.gate_id}/decide",
        )
    assert answer.pr_url is not None and answer.pr_number is not None
    return PrCreated(pr_url=answer.pr_url, pr_number=answer.pr_number, branch=answer.branch)
