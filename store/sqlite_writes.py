"""A `Writes` flush's row updates on SQLite, run by this project's driver directly.

SQLAlchemy spends ~0.2 ms executing each prebuilt UPDATE here (its execution context, the
statement's cache key, the result), where SQLite takes 0.02 to 0.1 ms; a step's start record
runs three. On SQLite with `sqlite_driver`'s connection, a flush gives its UPDATEs to
that connection's cursor instead: the same transaction and writer turn, the same handling
of a lock held by another process, and the values converted by each column type's own
`bind_processor`, as SQLAlchemy converts them. Anywhere else the caller runs them as
usual. An UPDATE takes no column defaults (these tables have no `onupdate`, which
`_update_sql` asserts), so nothing SQLAlchemy would add is missing. What it does not see:
SQLAlchemy's engine events and echo, which these UPDATEs go past.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from store import resources, sqlite_driver


class DirectUpdates:
    """UPDATEs on the session's SQLite connection, in its transaction."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self._connection = connection
        self._dialect = dialect

    async def update(
        self, table: type[SQLModel], where: dict[str, Any], values: dict[str, Any]
    ) -> None:
        """As `resources.update`: SET `values` where each column of `where` equals its
        value; no values, no statement."""
        if not values:
            return
        values = resources.checked(table, values)
        sql = _update_sql(self._dialect, table, tuple(where), tuple(values))
        given = [*values.values(), *where.values()]
        # Errors as SQLAlchemy raises them, so callers and logs see one kind: a value its
        # column refuses (a naive time, what JSON cannot hold), then the database's own.
        try:
            params = [
                _converted(self._dialect, table, name, value)
                for name, value in (*values.items(), *where.items())
            ]
        except (ValueError, TypeError) as exc:
            raise sa.exc.StatementError(str(exc), sql, given, exc) from exc
        try:
            await sqlite_driver.write(self._connection, sql, params)
        except sqlite3.Error as exc:
            raise sa.exc.DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc


async def direct_updates(session: AsyncSession) -> DirectUpdates | None:
    """Direct updates on `session`'s connection, when it is `sqlite_driver`'s; else None."""
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        return None
    raw = await (await session.connection()).get_raw_connection()
    connection = raw.dbapi_connection
    if not sqlite_driver.is_own(connection):
        return None  # the stock adapter (sqlite_driver.usable() said no)
    return DirectUpdates(connection, dialect)


# Bounded: each engine has its own dialect (a process has one; tests make many).
@functools.lru_cache(maxsize=512)
def _update_sql(
    dialect: Dialect, table: type[SQLModel], keys: tuple[str, ...], columns: tuple[str, ...]
) -> str:
    core = resources.core(table)
    # SQLAlchemy would add an `onupdate` column's value to the SET; this does not.
    assert all(c.onupdate is None and c.server_onupdate is None for c in core.columns), core
    quote = dialect.identifier_preparer.quote
    name = quote(core.name)
    sets = ", ".join(f"{quote(c)} = ?" for c in columns)
    wheres = " AND ".join(f"{quote(k)} = ?" for k in keys)
    return f"UPDATE {name} SET {sets} WHERE {wheres}"


def _converted(dialect: Dialect, table: type[SQLModel], column: str, value: Any) -> Any:
    # None goes through too: a JSON column stores it as JSON's null, as SQLAlchemy does.
    convert = _processor(dialect, table, column)
    return value if convert is None else convert(value)


@functools.lru_cache(maxsize=2048)
def _processor(dialect: Dialect, table: type[SQLModel], column: str) -> Callable[[Any], Any] | None:
    kind = resources.core(table).c[column].type
    processor: Callable[[Any], Any] | None = kind.dialect_impl(dialect).bind_processor(dialect)
    return processor
