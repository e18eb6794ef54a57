"""Workspaces (`/api/v1/workspaces`): the clones tasks work in, listed and deleted."""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime
from typing import Annotated

from fastapi import Request, status
from pydantic import BaseModel

from activities.workspaces import list_workspaces
from api.auth import require
from api.decisions import updating
from api.deps import SessionDep, SettingsDep, TemporalDep
from api.errors import ApiError, ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from store.models import Task
from store.tokens import Principal, Scope
from workflows.task_spec import TAKES_INSTRUCTIONS, TASK_ENDS, ReleaseIn
from workflows.tasks import TaskWorkflow

router = strict_router(
    prefix="/api/v1/workspaces",
    tags=["tasks"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
Reader = Annotated[Principal, require(Scope.tasks_read)]
Writer = Annotated[Principal, require(Scope.tasks_write)]


class WorkspacePublic(BaseModel):
    task_id: str
    path: str
    branch: str | None
    size_bytes: int
    modified_at: datetime
    task_status: str | None


@router.get("", summary="List workspaces")
async def get_workspaces(
    request: Request, _: Reader, session: SessionDep, settings: SettingsDep, params: PageQuery
) -> Page[WorkspacePublic]:
    """Every task workspace in the data directory, with its task's status."""
    found = await asyncio.to_thread(list_workspaces, settings)
    found.sort(key=lambda w: w.owner_id)
    items = []
    for w in found[params.skip : params.skip + params.limit]:
        task = await session.get(Task, w.owner_id)
        items.append(
            WorkspacePublic(
                task_id=w.owner_id,
                path=w.path,
                branch=w.branch,
                size_bytes=w.size_bytes,
                modified_at=w.modified_at,
                task_status=task.state if task else None,
            )
        )
    return page(request, items, len(found), params)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task's workspace",
    responses={
        404: {"model": ErrorBody, "description": "No such workspace"},
        409: {"model": ErrorBody, "description": "The task is running"},
    },
)
async def delete_workspace(
    task_id: str,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> None:
    """A task waiting for instructions lets its workspace go and finishes; an ended
    task's workspace is removed at once. A running task's answers 409."""
    task = await session.get(Task, task_id)
    path = (settings.workspaces_dir / task_id).resolve()
    if not path.is_relative_to(settings.workspaces_dir) or path == settings.workspaces_dir:
        raise not_found("workspace", task_id)
    if not path.is_dir():
        raise not_found("workspace", task_id)
    if task is not None and task.state in TAKES_INSTRUCTIONS and task.completed_at is None:
        handle = temporal.get_workflow_handle(task_id)
        await updating(handle.execute_update(TaskWorkflow.release, ReleaseIn(by=principal.name)))
        return
    if task is not None and task.completed_at is None and task.state not in TASK_ENDS:
        raise ApiError(
            409, "TASK_RUNNING", f"task {task_id} is {task.state}; its workspace is in use"
        )
    if not path.is_dir():
        raise not_found("workspace", task_id)
    await asyncio.to_thread(shutil.rmtree, path)
