"""A `Writes` flush on SQLite, run by this project's driver directly, in one go.

SQLAlchemy spends ~0.2 ms executing each prebuilt statement here (its execution context,
the statement's cache key, the result), where SQLite takes 0.02 to 0.1 ms; a step's start
record runs three UPDATEs and an INSERT. On SQLite with `sqlite_driver`'s connection, a
flush gives its row updates and its events' INSERT to that connection as one batch
instead: the same transaction and writer turn, the same handling of a lock held by
another process, and the values converted by each column type's own `bind_processor`, as
SQLAlchemy converts them. Anywhere else the caller runs them as usual.

Nothing SQLAlchemy would add is missing: an UPDATE takes no column defaults (these tables
have no `onupdate`, which `_update_sql` checks), and an INSERT names every column but
its autoincrement key (`_insert_sql` checks it). What it does not see: SQLAlchemy's
engine events and echo, which these statements go past.
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


class DirectWrites:
    """Writes on the session's SQLite connection, in its transaction, built one by one
    and run together."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self._connection = connection
        self._dialect = dialect
        self._statements: list[sqlite_driver.Statement] = []

    def update(self, table: type[SQLModel], where: dict[str, Any], values: dict[str, Any]) -> None:
        """As `resources.update`: SET `values` where each column of `where` equals its
        value; no values, no statement."""
        if not values:
            return
        values = resources.checked(table, values)
        sql = _update_sql(self._dialect, table, tuple(where), tuple(values))
        pairs = [*values.items(), *where.items()]
        self._statements.append((sql, self._params(sql, table, pairs), False))

    def insert_many(self, table: type[SQLModel], rows: list[dict[str, Any]]) -> None:
        """As `resources.insert_many`: rows with the same columns, every one but the
        autoincrement key."""
        if not rows:
            return
        columns = tuple(resources.checked(table, rows[0]))
        sql = _insert_sql(self._dialect, table, columns)
        for row in rows[1:]:
            if row.keys() != rows[0].keys():
                raise ValueError(f"{table.__tablename__}: rows name other columns than the first")
        params = [self._params(sql, table, [(c, row[c]) for c in columns]) for row in rows]
        self._statements.append((sql, params, True))

    async def run(self) -> None:
        """Everything built so far, in the order it was built."""
        statements, self._statements = self._statements, []
        if not statements:
            return
        try:
            await sqlite_driver.write(self._connection, statements)
        except sqlite3.Error as exc:
            sql = ";\n".join(s[0] for s in statements)
            params = [s[1] for s in statements]
            raise sa.exc.DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc

    def _params(self, sql: str, table: type[SQLModel], pairs: list[tuple[str, Any]]) -> list[Any]:
        # Errors as SQLAlchemy raises them, so callers and logs see one kind: a value its
        # column refuses (a naive time, what JSON cannot hold), then the database's own.
        try:
            return [_converted(self._dialect, table, c, v) for c, v in pairs]
        except (ValueError, TypeError) as exc:
            raise sa.exc.StatementError(str(exc), sql, [v for _, v in pairs], exc) from exc


async def direct_writes(session: AsyncSession) -> DirectWrites | None:
    """Direct writes on `session`'s connection, when it is `sqlite_driver`'s; else None."""
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        return None
    raw = await (await session.connection()).get_raw_connection()
    connection = raw.dbapi_connection
    if not sqlite_driver.is_own(connection):
        return None  # the stock adapter (sqlite_driver.usable() said no)
    return DirectWrites(connection, dialect)


# Bounded: each engine has its own dialect (a process has one; tests make many).
@functools.lru_cache(maxsize=512)
def _update_sql(
    dialect: Dialect, table: type[SQLModel], keys: tuple[str, ...], columns: tuple[str, ...]
) -> str:
    core = resources.core(table)
    # SQLAlchemy would add an `onupdate` column's value to the SET; this does not.
    if any(c.onupdate is not None or c.server_onupdate is not None for c in core.columns):
        raise ValueError(f"{core.name} has an onupdate column: update it through SQLAlchemy")
    quote = dialect.identifier_preparer.quote
    sets = ", ".join(f"{quote(c)} = ?" for c in columns)
    wheres = " AND ".join(f"{quote(k)} = ?" for k in keys)
    return f"UPDATE {quote(core.name)} SET {sets} WHERE {wheres}"


@functools.lru_cache(maxsize=512)
def _insert_sql(dialect: Dialect, table: type[SQLModel], columns: tuple[str, ...]) -> str:
    core = resources.core(table)
    # SQLAlchemy would fill a missing column's default; this names them all instead.
    missing = {c.name for c in core.columns if c is not core.autoincrement_column} - set(columns)
    if missing:
        raise ValueError(f"{core.name}: an INSERT here names every column; no {sorted(missing)}")
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {quote(core.name)} ({names}) VALUES ({marks})"


def _converted(dialect: Dialect, table: type[SQLModel], column: str, value: Any) -> Any:
    # None goes through too: a JSON column stores it as JSON's null, as SQLAlchemy does.
    convert = _processor(dialect, table, column)
    return value if convert is None else convert(value)


@functools.lru_cache(maxsize=2048)
def _processor(dialect: Dialect, table: type[SQLModel], column: str) -> Callable[[Any], Any] | None:
    kind = resources.core(table).c[column].type
    processor: Callable[[Any], Any] | None = kind.dialect_impl(dialect).bind_processor(dialect)
    return processor
