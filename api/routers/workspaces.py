"""Workspaces (`/api/v1/workspaces`): the clones tasks work in, listed and deleted."""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime
from typing import Annotated

from fastapi import Path, Request, status
from pydantic import BaseModel
from sqlmodel import col, select

from activities.workspaces import OWNER_ID, list_workspaces
from api.auth import require
from api.decisions import updating
from api.deps import SessionDep, SettingsDep, TemporalDep
from api.errors import ApiError, ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from settings import LIMITS
from store.models import Task
from store.tokens import Principal, Scope
from workflows.task_spec import TAKES_INSTRUCTIONS, ReleaseIn
from workflows.tasks import TaskWorkflow

router = strict_router(
    prefix="/api/v1/workspaces",
    tags=["tasks"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
Reader = Annotated[Principal, require(Scope.tasks_read)]
Writer = Annotated[Principal, require(Scope.tasks_write)]
WorkspaceId = Annotated[
    str, Path(max_length=LIMITS.max_name_chars, pattern=f"^{OWNER_ID.pattern}$")
]


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
    """Every task workspace in the data directory, with its task's status. (Runs keep
    their workspaces there too; they are not listed here.)"""
    found = await asyncio.to_thread(list_workspaces, settings)
    ids = [w.owner_id for w in found]
    tasks = (
        {t.id: t for t in await session.exec(select(Task).where(col(Task.id).in_(ids)))}
        if ids
        else {}
    )
    mine = sorted((w for w in found if w.owner_id in tasks), key=lambda w: w.owner_id)
    items = [
        WorkspacePublic(
            task_id=w.owner_id,
            path=w.path,
            branch=w.branch,
            size_bytes=w.size_bytes,
            modified_at=w.modified_at,
            task_status=tasks[w.owner_id].state,
        )
        for w in mine[params.skip : params.skip + params.limit]
    ]
    return page(request, items, len(mine), params)


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
    task_id: WorkspaceId,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> None:
    """A task waiting for instructions lets its workspace go and finishes (answered once it
    is gone); an ended task's workspace is removed at once. A running task's answers 409."""
    task = await session.get(Task, task_id)
    path = settings.workspaces_dir / task_id
    if task is None or not await asyncio.to_thread(path.is_dir):
        raise not_found("workspace", task_id)
    if task.completed_at is None and task.state in TAKES_INSTRUCTIONS:
        handle = temporal.get_workflow_handle(task_id)
        await updating(handle.execute_update(TaskWorkflow.release, ReleaseIn(by=principal.name)))
        return
    if task.completed_at is None:
        raise ApiError(
            409, "TASK_RUNNING", f"task {task_id} is {task.state}; its workspace is in use"
        )
    await asyncio.to_thread(shutil.rmtree, path, True)
