"""The event log: append-only, ids only grow, read by resource after an id.

On PostgreSQL, appends to one resource are serialized by an advisory lock, so they commit
in id order and a reader following `id > last` never skips one; each append NOTIFYs the
API processes' watchers. On SQLite, writers are serialized anyway and watchers poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict, Unpack

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store import resources
from store.models import Event, utcnow

CHANNEL = "pilothouse_events"


class EventFields(TypedDict, total=False):
    """What an event may say besides its resource and type."""

    stage: str | None
    status: str | None
    message: str
    payload: dict[str, Any] | None
    final: bool


def row(
    resource_kind: str, resource_id: str, type: str, **fields: Unpack[EventFields]
) -> dict[str, Any]:
    """An event as `append_many` takes it; it is stamped as it is written."""
    return {
        "resource_kind": resource_kind,
        "resource_id": resource_id,
        "type": type,
        "stage": fields.get("stage"),
        "status": fields.get("status"),
        "message": fields.get("message", ""),
        "payload": fields.get("payload") or {},
        "final": fields.get("final", False),
    }


async def append(
    session: AsyncSession,
    resource_kind: str,
    resource_id: str,
    type: str,
    **fields: Unpack[EventFields],
) -> None:
    """Add an event to the caller's transaction; it becomes visible at commit."""
    await append_many(session, [row(resource_kind, resource_id, type, **fields)])


async def append_many(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Add events (`row`s) to the caller's transaction, in their order, in one INSERT."""
    if not rows:
        return
    owners = sorted({r["resource_id"] for r in rows})
    postgres = resources.is_postgres(session)
    if postgres:
        conn = await session.connection()
        for owner in owners:  # sorted: two calls on the same resources lock them alike
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:r))"), {"r": owner})
    # A plain INSERT built once: the ORM's unit of work costs more than the statement on
    # this path, which every step takes twice. `Writes.flush` on SQLite writes its events
    # past here, in its batch (store/sqlite_writes.py): what SQLite needs here, it needs too.
    await resources.insert_many(session, Event, stamped(rows))
    if postgres:
        # Delivered at commit, so it may precede the insert in the transaction.
        for owner in owners:
            await conn.execute(
                sa.text("SELECT pg_notify(:channel, :resource)"),
                {"channel": CHANNEL, "resource": owner},
            )


def stamped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`row`s as they are written: with the time, one for all."""
    now = utcnow()
    return [r | {"created_at": now} for r in rows]


async def after(
    session: AsyncSession, resource_id: str, after_id: int = 0, limit: int = 100
) -> Sequence[Event]:
    result = await session.exec(
        select(Event)
        .where(Event.resource_id == resource_id, col(Event.id) > after_id)
        .order_by(col(Event.id))
        .limit(limit)
    )
    return result.all()


async def count(session: AsyncSession, resource_id: str) -> int:
    result = await session.exec(
        select(sa.func.count()).select_from(Event).where(Event.resource_id == resource_id)
    )
    return int(result.one())


async def since_global(session: AsyncSession, after_id: int, limit: int) -> Sequence[Event]:
    """Every resource's events after an id: the SQLite watcher's one query."""
    result = await session.exec(
        select(Event).where(col(Event.id) > after_id).order_by(col(Event.id)).limit(limit)
    )
    return result.all()


async def last_id(session: AsyncSession, resource_id: str | None = None) -> int:
    query = select(sa.func.max(Event.id))
    if resource_id is not None:
        query = query.where(Event.resource_id == resource_id)
    return int((await session.exec(query)).one() or 0)
