"""Task definitions (`/api/v1/tasks`, kind `definition`): change, delete, execute, list
executions, pause and unpause the schedule. Made by `POST /api/v1/tasks` with
`prompt_template` (api/routers/tasks.py)."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Request, Response, status
from sqlmodel import col, select

from api import definitions, schedules
from api.auth import require
from api.deps import SessionDep, SettingsDep, TemporalDep
from api.errors import ApiError, ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from api.starts import Caller, starter
from api.task_definitions import task_view
from api.task_models import (
    ExecutionPublic,
    ExecutionStarted,
    PauseAnswer,
    TaskPublic,
    execution_public,
)
from settings import LIMITS
from store import events
from store.models import Task
from store.tokens import Principal, Scope
from workflows.definition_spec import DefinitionPatch, ExecuteBody, check_definition

router = strict_router(
    prefix="/api/v1/tasks",
    tags=["tasks"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
Reader = Annotated[Principal, require(Scope.tasks_read)]
Writer = Annotated[Principal, require(Scope.tasks_write)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such task definition"},
    409: {"model": ErrorBody, "description": "A run, not a definition; or no schedule"},
}
SCHEDULE: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    503: {"model": ErrorBody, "description": "Temporal did not answer"},
}


async def load_definition(session: SessionDep, task_id: str) -> Task:
    task = await session.get(Task, task_id) if len(task_id) <= LIMITS.max_name_chars else None
    if task is None:
        raise not_found("task", task_id)
    if task.kind != "definition":
        raise ApiError(
            409, "NOT_A_DEFINITION", f"task {task_id} is a run; only a definition has this"
        )
    return task


@router.patch("/{task_id}", summary="Change a task definition", responses=SCHEDULE)
async def update_definition(
    task_id: str,
    body: DefinitionPatch,
    principal: Writer,
    session: SessionDep,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> TaskPublic:
    """Changes the fields given; its schedule follows (made, changed, or removed when
    `is_scheduled` becomes false), keeping whether it is paused."""
    task = await load_definition(session, task_id)
    was_scheduled = schedules.scheduled(task)
    # Only the schedule and the description can be taken away; a null elsewhere keeps it.
    changes = {
        k: v
        for k, v in body.model_dump(mode="json", exclude_unset=True).items()
        if v is not None or k in ("schedule_cron", "description")
    }
    fields = dict(task.definition or {}) | changes
    if "schedule_cron" in changes and "is_scheduled" not in changes:
        fields["is_scheduled"] = fields.get("schedule_cron") is not None
    try:
        check_definition(fields)
    except ValueError as exc:
        raise ApiError(422, "VALIDATION_ERROR", str(exc)) from None
    config, tools = await definitions.resolve(session, fields)
    task.definition = fields | {"tools": tools}
    task.config = config
    task.name = fields["name"]
    task.description = fields.get("description")
    task.prompt = fields["prompt_template"]
    if schedules.scheduled(task):
        await schedules.replace(temporal, definitions.schedule_of(task, settings), task.id)
    elif was_scheduled:
        await schedules.delete(temporal, task.id)
        task.state = "active"
    session.add(task)
    await events.append(
        session,
        "task",
        task.id,
        "task_updated",
        status=task.state,
        message=f"definition changed by {principal.name}: {', '.join(sorted(changes))}",
        payload={"operator": principal.name, "fields": sorted(changes)},
    )
    await session.commit()
    await session.refresh(task)
    return await task_view(session, temporal, task)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task definition and its schedule",
    responses=SCHEDULE,
)
async def delete_definition(
    task_id: str, _: Writer, session: SessionDep, temporal: TemporalDep
) -> Response:
    """The schedule goes first, so nothing fires for a definition that is gone; executions
    stay, each with its `definition_id`."""
    task = await load_definition(session, task_id)
    await schedules.delete(temporal, task.id)
    await session.delete(task)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{task_id}/execute",
    summary="Execute a task definition now",
    responses={**SCHEDULE, 422: {"model": ErrorBody}},
)
async def execute(
    task_id: str, body: ExecuteBody, caller: Annotated[Caller, starter(Scope.tasks_write)]
) -> ExecutionStarted:
    """Renders `{{var}}` from `variables` over the definition's defaults (a missing one is
    a 422 naming it) and starts an execution: a task of its own, in a scratch workspace
    when the definition has no repository. `session_id` is the execution's task id."""
    definition = await load_definition(caller.session, task_id)
    run = await definitions.execute(caller, definition, body.variables, body)
    return ExecutionStarted(
        execution_id=run.id, session_id=run.id, status="running", started_at=run.created_at
    )


@router.get("/{task_id}/executions", summary="A definition's executions", responses=NOT_FOUND)
async def list_executions(
    task_id: str, request: Request, _: Reader, session: SessionDep, params: PageQuery
) -> Page[ExecutionPublic]:
    """Every run, scheduled or manual, newest first."""
    await load_definition(session, task_id)
    query = select(Task).where(Task.definition_id == task_id)
    total = (await session.exec(select(sa.func.count()).select_from(query.subquery()))).one()
    rows = await session.exec(
        query.order_by(col(Task.created_at).desc()).offset(params.skip).limit(params.limit)
    )
    return page(request, [execution_public(t) for t in rows], int(total), params)


async def _pause(
    task_id: str, paused: bool, principal: Principal, session: SessionDep, temporal: TemporalDep
) -> PauseAnswer:
    task = await load_definition(session, task_id)
    if not schedules.scheduled(task):
        raise ApiError(409, "NOT_SCHEDULED", f"task {task_id} has no schedule")
    await schedules.set_paused(temporal, task.id, paused, principal.name)
    task.state = "paused" if paused else "active"
    session.add(task)
    await events.append(
        session,
        "task",
        task.id,
        "schedule_paused" if paused else "schedule_unpaused",
        status=task.state,
        message=f"schedule {task.state} by {principal.name}",
        payload={"operator": principal.name},
    )
    await session.commit()
    return PauseAnswer(id=task.id, is_active=not paused)


@router.post("/{task_id}/pause", summary="Pause a definition's schedule", responses=SCHEDULE)
async def pause(
    task_id: str, principal: Writer, session: SessionDep, temporal: TemporalDep
) -> PauseAnswer:
    return await _pause(task_id, True, principal, session, temporal)


@router.post("/{task_id}/unpause", summary="Resume a definition's schedule", responses=SCHEDULE)
async def unpause(
    task_id: str, principal: Writer, session: SessionDep, temporal: TemporalDep
) -> PauseAnswer:
    return await _pause(task_id, False, principal, session, temporal)
