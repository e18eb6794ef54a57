"""Creating a resource that a workflow runs: the row, its first event, the idempotency key,
then the workflow start, undone whole if the start fails. Every family's create uses it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Request
from pydantic import BaseModel
from sqlmodel import SQLModel, col
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from api.auth import admit, current_principal
from api.decisions import refusal
from api.deps import IdempotencyKeyHeader, checked_key
from api.errors import ApiError, not_found
from api.metrics import WORKFLOW_STARTS
from api.session import request_session
from settings import Settings
from store import events, idempotency, resources
from store.models import Event, IdempotencyKey
from store.tokens import Principal, Scope
from workflows import attributes

Row = TypeVar("Row", bound=SQLModel)


@dataclass(frozen=True)
class Caller:
    """Who asks for a create, and what the create needs, from one dependency: each one
    more is solved on every request, and creates are the API's busiest writes."""

    principal: Principal
    session: AsyncSession
    temporal: Client
    settings: Settings
    key: str | None


def starter(*scopes: Scope) -> Any:
    """The dependency of a create route: a token with `scopes`, the request's session, its
    Idempotency-Key, Temporal; refused while the pause_new_work kill switch is on."""

    async def caller(
        request: Request,
        principal: Annotated[Principal, Depends(current_principal)],
        session: Annotated[AsyncSession, Depends(request_session)],
        key: IdempotencyKeyHeader = None,
    ) -> Caller:
        admit(principal, scopes)
        state = request.app.state
        if state.settings.pause_new_work:
            raise ApiError(
                503, "NEW_WORK_PAUSED", "new work is paused by the pause_new_work kill switch"
            )
        return Caller(principal, session, state.temporal.client, state.settings, checked_key(key))

    return Depends(caller)


async def create_and_start(
    caller: Caller,
    body: BaseModel,
    *,
    kind: str,
    new_row: Callable[[], Row],
    created_event: dict[str, Any],
    workflow: Callable[..., Awaitable[Any]],
    workflow_input: Callable[[Row], BaseModel],
    summary: Callable[[Row], str],
    children: Callable[[Row], Sequence[SQLModel]] = lambda _: (),
    task_timeout: timedelta | None = None,
) -> Row:
    """The resource for this request: made and started now, or the one an earlier
    request with the same Idempotency-Key made (started again if that start was lost).
    `task_timeout`: the workflow task's, when the family wants another than Temporal's."""
    session, principal, key = caller.session, caller.principal, caller.key
    row = new_row()
    table = type(row)
    # Only a keyed create is compared with an earlier one.
    print_ = idempotency.fingerprint(body.model_dump(mode="json")) if key else ""
    fresh = True
    try:
        earlier = key and await idempotency.find(session, kind, principal.token_id, key, print_)
        if earlier:
            row, fresh = await _load(session, table, earlier), False
        else:
            # The key is claimed in the row's transaction, once the row is known new.
            await _insert(session, kind, row, [row])
            if key:
                rid = _id(row)
                winner = await idempotency.claim(
                    session, kind, principal.token_id, key, print_, rid
                )
                if winner != rid:
                    row, fresh = await _load(session, table, winner), False
            if fresh:
                # Rows of the resource's parts (a run's tiers and phases) go in with it;
                # its first event follows.
                await _insert(session, kind, row, children(row))
                await events.append(session, kind, _id(row), f"{kind}_created", **created_event)
                await session.commit()
    except idempotency.KeyReused:
        raise ApiError(
            422, "IDEMPOTENCY_KEY_REUSED", "header.Idempotency-Key: used before with another body"
        ) from None
    try:
        # USE_EXISTING: a repeated create whose first start was lost starts it now,
        # and one whose start went through gets the running workflow.
        await caller.temporal.start_workflow(
            workflow,
            workflow_input(row),
            id=_id(row),
            task_queue=caller.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(attributes.KIND, kind),
                    SearchAttributePair(attributes.STATE, str(created_event["status"])),
                ]
            ),
            static_summary=summary(row),
            task_timeout=task_timeout,
        )
    except Exception as exc:
        if fresh:
            await _undo(session, kind, _id(row), table)
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise refusal(exc) from None
        raise ApiError(503, "TEMPORAL_UNAVAILABLE", f"could not start the {kind}: {exc}") from None
    if fresh:
        WORKFLOW_STARTS.labels(kind).inc()
    return row


async def _insert(
    session: AsyncSession, kind: str, row: SQLModel, rows: Sequence[SQLModel]
) -> None:
    """Plain INSERTs, one per table: the ORM's unit of work costs more than the statements
    on the path every create takes. The rows stay out of the session."""
    by_table: dict[type[SQLModel], list[dict[str, Any]]] = {}
    for each in rows:
        by_table.setdefault(type(each), []).append(_values(each))
    try:
        for table, values in by_table.items():
            await resources.insert_many(session, table, values)
    except sa.exc.IntegrityError:
        # The caller chose the id (a run's run_id) and it is taken; with a key, the key is
        # new, so this is not a repeat of the request that took it.
        await session.rollback()
        raise ApiError(
            409, f"{kind.upper()}_EXISTS", f"a {kind} {_id(row)!r} exists already"
        ) from None


def _values(row: SQLModel) -> dict[str, Any]:
    # An autoincrement key left unset is left out, so the database numbers it.
    return {
        column.key: value
        for column in resources.core(type(row)).columns
        if (value := getattr(row, column.key)) is not None or not column.primary_key
    }


def _id(row: SQLModel) -> str:
    return str(row.id)  # type: ignore[attr-defined]


async def _load(session: AsyncSession, table: type[Row], resource_id: str) -> Row:
    row = await session.get(table, resource_id)
    if row is None:
        raise not_found(table.__name__.lower(), resource_id)
    return row


async def _undo(session: AsyncSession, kind: str, resource_id: str, table: type[SQLModel]) -> None:
    """No workflow means no resource: take back the row, its parts, events and key."""
    for (owner_kind, _), (part, owner, _) in resources.PARTS.items():
        if owner_kind == kind:
            await session.exec(
                sa.delete(resources.core(part)).where(resources.core(part).c[owner] == resource_id)
            )
    await session.exec(
        sa.delete(resources.core(table)).where(resources.core(table).c.id == resource_id)
    )
    await session.exec(sa.delete(Event).where(col(Event.resource_id) == resource_id))
    await session.exec(
        sa.delete(IdempotencyKey).where(col(IdempotencyKey.resource_id) == resource_id)
    )
    await session.commit()
