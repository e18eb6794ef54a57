"""`POST /api/v1/tasks` takes either shape: `prompt` (a coding-agent task that runs now) or
`prompt_template` (a task definition). Both refuse unknown fields and name them; which
one applies is decided by the field, so the errors are the chosen shape's alone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, Discriminator, Tag
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api import definitions, schedules
from api.errors import ApiError, not_found
from api.repositories import check_repository
from api.starts import Caller
from api.task_models import TaskPublic, task_public
from store import events, idempotency
from store.models import Event, IdempotencyKey, Task, TaskIteration
from workflows.definition_spec import DefinitionCreate
from workflows.task_spec import TaskCreate


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        return "definition" if "prompt_template" in value else "run"
    return "definition" if isinstance(value, DefinitionCreate) else "run"


TaskBody = Annotated[
    Annotated[TaskCreate, Tag("run")] | Annotated[DefinitionCreate, Tag("definition")],
    Discriminator(_shape),
]


class DefinitionCreated(BaseModel):
    id: str
    kind: str = "definition"
    name: str
    status: str
    is_scheduled: bool
    schedule_cron: str | None
    schedule_id: str | None
    created_at: datetime


async def create_definition(caller: Caller, body: DefinitionCreate) -> DefinitionCreated:
    """The row, then its schedule; a schedule Temporal refuses takes the row back. A
    request repeated with its `Idempotency-Key` answers the same definition, and makes its
    schedule again if the first request's was lost."""
    session, temporal, settings = caller.session, caller.temporal, caller.settings
    principal, key = caller.principal, caller.key
    print_ = idempotency.fingerprint(body.model_dump(mode="json"))
    try:
        earlier = key and await idempotency.find(session, "task", principal.token_id, key, print_)
        row = await session.get(Task, earlier) if earlier else None
        if row is None:
            check_repository(body.repo_url, settings)
            row = await definitions.new_definition(session, principal, body)
            session.add(row)
            await session.flush()
            winner = row.id
            if key:
                winner = await idempotency.claim(
                    session, "task", principal.token_id, key, print_, row.id
                )
            if winner != row.id:
                found = await session.get(Task, winner)
                if found is None:
                    raise not_found("task", winner)
                row = found
            else:
                await events.append(
                    session,
                    "task",
                    row.id,
                    "task_created",
                    status=row.state,
                    message=f"task definition {body.name!r} created by {principal.name}",
                    payload={"operator": principal.name, "kind": "definition"},
                )
                await session.commit()
    except idempotency.KeyReused:
        raise ApiError(
            422, "IDEMPOTENCY_KEY_REUSED", "header.Idempotency-Key: used before with another body"
        ) from None
    if schedules.scheduled(row):
        try:
            await schedules.create(temporal, definitions.schedule_of(row, settings), row.id)
        except Exception:
            # No schedule, no definition: the row, its event and its key go with it.
            await session.delete(row)
            await session.exec(sa.delete(Event).where(col(Event.resource_id) == row.id))
            await session.exec(
                sa.delete(IdempotencyKey).where(col(IdempotencyKey.resource_id) == row.id)
            )
            await session.commit()
            raise
    return DefinitionCreated(
        id=row.id,
        name=row.name or body.name,
        status=row.state,
        is_scheduled=schedules.scheduled(row),
        schedule_cron=body.schedule_cron,
        schedule_id=schedules.schedule_id(row.id) if schedules.scheduled(row) else None,
        created_at=row.created_at,
    )


async def task_view(
    session: AsyncSession,
    temporal: Client,
    task: Task,
    iterations: list[TaskIteration] | None = None,
) -> TaskPublic:
    """A task as it is; a scheduled definition's `is_active`, `next_run_at` and
    `last_run_at` as its schedule says (paused from the Temporal UI counts too)."""
    if task.kind != "definition" or not schedules.scheduled(task):
        return task_public(task, iterations)
    seen = await schedules.view(temporal, task.id)
    if seen is None:
        return task_public(task, iterations)
    task.state = "active" if seen.is_active else "paused"
    runs = [t for t in (task.last_run_at, seen.last_run_at) if t is not None]
    task.last_run_at = max(runs) if runs else None
    public = task_public(task, iterations, next_run_at=seen.next_run_at)
    await session.rollback()  # read only: what was set above is for the answer
    return public
