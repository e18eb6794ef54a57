"""Resource rows of every family (job, and the ones to come), updated by kind."""

from __future__ import annotations

import functools
import typing
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import ApprovalRequest, Job, Run, RunPhase, RunTier, Task, TaskIteration, utcnow

TABLES: dict[str, type[SQLModel]] = {
    "job": Job,
    "approval": ApprovalRequest,
    "run": Run,
    "task": Task,
}
# The parts of a resource that have rows of their own, by (kind, part): table, the column
# naming their resource, and their key column.
PARTS: dict[tuple[str, str], tuple[type[SQLModel], str, str]] = {
    ("run", "phase"): (RunPhase, "run_id", "phase_id"),
    ("run", "tier"): (RunTier, "run_id", "tier_id"),
    ("task", "iteration"): (TaskIteration, "task_id", "number"),
}


def core(table: type[SQLModel]) -> sa.Table:
    """A model's table for plain statements: an UPDATE through the ORM class first looks
    for loaded objects to keep in step, which costs more than the statement here."""
    return SQLModel.metadata.tables[str(table.__tablename__)]


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# Statements built once per table and shape, given their values as parameters: building
# `.values(...)` anew cost about as much as running the statement, on paths every step takes.
async def insert(session: AsyncSession, table: type[SQLModel], values: dict[str, Any]) -> None:
    """INSERT a row of `values` into `table`, in the caller's transaction."""
    await session.exec(_insert(table), params=checked(table, values))


async def insert_many(
    session: AsyncSession, table: type[SQLModel], rows: list[dict[str, Any]]
) -> None:
    """INSERT rows that have the same columns, in one statement run (executemany): the
    statement takes its columns from the first row."""
    if not rows:
        return
    await session.exec(_insert(table), params=[checked(table, values) for values in rows])


async def insert_new(
    session: AsyncSession, table: type[SQLModel], keys: tuple[str, ...], values: dict[str, Any]
) -> bool:
    """INSERT a row unless one with the same `keys` is there; whether it was added (by
    RETURNING, which says so on both databases where rowcount did not on PostgreSQL)."""
    statement = _insert_new(table, is_postgres(session), keys)
    added = await session.exec(statement, params=checked(table, values))
    return added.first() is not None


async def update(
    session: AsyncSession, table: type[SQLModel], where: dict[str, Any], values: dict[str, Any]
) -> None:
    """UPDATE `table` SET `values` where each column of `where` equals its value; no
    values, no statement."""
    if not values:
        return
    params = {f"where_{key}": value for key, value in where.items()}
    await session.exec(_update(table, tuple(where)), params=params | checked(table, values))


def checked(table: type[SQLModel], values: dict[str, Any]) -> dict[str, Any]:
    # A statement run with parameters ignores keys that name no column; a typo must fail.
    unknown = values.keys() - _column_names(table)
    if unknown:
        raise ValueError(f"{table.__tablename__} has no column {', '.join(sorted(unknown))}")
    return values


@functools.cache
def _column_names(table: type[SQLModel]) -> frozenset[str]:
    names = frozenset(core(table).c.keys())
    # `update` names its WHERE parameters so; a column of that name would be taken for one.
    assert not any(name.startswith("where_") for name in names), table
    return names


@functools.cache
def _insert(table: type[SQLModel]) -> sa.Insert:
    return sa.insert(core(table))


@functools.cache
def _insert_new(table: type[SQLModel], postgres: bool, keys: tuple[str, ...]) -> sa.Insert:
    into = (postgresql.insert if postgres else sqlite.insert)(core(table))
    return into.on_conflict_do_nothing(index_elements=list(keys)).returning(core(table).c[keys[0]])


@functools.cache
def _update(table: type[SQLModel], keys: tuple[str, ...]) -> sa.Update:
    columns = core(table).c
    return sa.update(core(table)).where(
        *(columns[key] == sa.bindparam(f"where_{key}") for key in keys)
    )


def columns(table: type[SQLModel], values: dict[str, Any]) -> dict[str, Any]:
    """Values as their columns take them: workflows send times as ISO-8601 text."""
    out = dict(values)
    for name, value in values.items():
        field = table.model_fields.get(name)
        if isinstance(value, str) and field is not None:
            kinds = (field.annotation, *typing.get_args(field.annotation))
            if datetime in kinds:
                out[name] = datetime.fromisoformat(value)
    return out


Change = tuple[type[SQLModel], dict[str, Any], dict[str, Any]]  # table, where, values


async def set_fields(session: AsyncSession, kind: str, resource_id: str, **values: Any) -> None:
    """Set columns on a resource's row in the caller's transaction; unknown rows are left.
    One UPDATE, no load: workflows call this on the way to their next step."""
    for change in field_changes(kind, resource_id, values):
        await update(session, *change)


def field_changes(kind: str, resource_id: str, values: dict[str, Any]) -> list[Change]:
    """`set_fields` as the UPDATE it runs (none for a kind without a row)."""
    table = TABLES.get(kind)
    if table is None:
        return []
    return [(table, {"id": resource_id}, columns(table, values) | {"updated_at": utcnow()})]


def _part(kind: str, name: str) -> tuple[type[SQLModel], str, str, str | int]:
    part, _, part_id = name.partition(":")
    table, owner, key = PARTS[(kind, part)]
    key_value: str | int = int(part_id) if table.model_fields[key].annotation is int else part_id
    return table, owner, key, key_value


async def add_parts(
    session: AsyncSession, kind: str, resource_id: str, parts: dict[str, dict[str, Any]]
) -> None:
    """Add rows for parts that begin now (`"iteration:2"`); one there already is kept, so a
    retried activity adds nothing twice."""
    for name, values in parts.items():
        table, owner, key, key_value = _part(kind, name)
        found = await session.exec(
            select(table).where(sa.column(owner) == resource_id, sa.column(key) == key_value)
        )
        if found.first() is None:
            session.add(table(**{owner: resource_id, key: key_value, **columns(table, values)}))
            await session.flush()


async def set_parts(
    session: AsyncSession, kind: str, resource_id: str, parts: dict[str, dict[str, Any]]
) -> None:
    """Set columns on parts of a resource, named `"<part>:<id>"` (`"phase:build"`)."""
    for change in part_changes(kind, resource_id, parts):
        await update(session, *change)


def part_changes(kind: str, resource_id: str, parts: dict[str, dict[str, Any]]) -> list[Change]:
    """`set_parts` as the UPDATEs it runs."""
    changes = []
    for name, values in parts.items():
        table, owner, key, key_value = _part(kind, name)
        values = columns(table, values)
        if "updated_at" in table.model_fields:
            values = {**values, "updated_at": utcnow()}
        changes.append((table, {owner: resource_id, key: key_value}, values))
    return changes


async def set_ended(session: AsyncSession, kind: str, resource_id: str) -> None:
    """Stamp `completed_at` on a resource that keeps one, as it ends."""
    table = TABLES.get(kind)
    if table is not None and "completed_at" in table.model_fields:
        await update(session, table, {"id": resource_id}, {"completed_at": utcnow()})
