"""SQLAlchemy's aiosqlite driver, with each statement in one trip to the connection's thread.

aiosqlite runs every call on a thread of the connection's own, and SQLAlchemy's adapter
makes three or four such trips a statement: open a cursor, execute, fetch the rows, close
the cursor. Each trip wakes that thread, then the event loop: about 0.15 ms on a two-core
machine, and most of what a step's records cost (a `true` step's six statements and two
commits took 21 trips). Here a statement opens its cursor, executes, reads its rows and
closes the cursor in one function run on that thread; SQLAlchemy sees what it would have
seen (the rows, `description`, `rowcount`, `lastrowid`).

Server-side cursors (streamed results) keep SQLAlchemy's own adapter.
"""

from __future__ import annotations

import collections
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT


@dataclass
class _Ran:
    """What SQLAlchemy reads of a cursor after it executed."""

    description: Any
    rowcount: int
    lastrowid: int | None
    rows: list[Any]
    arraysize: int = 1  # `fetchmany()`'s default size, as sqlite3's cursors have it


def usable() -> bool:
    """Whether the adapter and aiosqlite have the shape this module grows (SQLAlchemy 2.1,
    aiosqlite up to 0.22); otherwise the stock adapter serves."""
    import aiosqlite

    return all(
        (
            hasattr(AsyncAdapt_aiosqlite_cursor, "_execute_async"),
            hasattr(AsyncAdapt_aiosqlite_cursor, "_soft_closed_memoized"),
            hasattr(aiosqlite.Connection, "_execute"),
            hasattr(aiosqlite.Connection, "_conn"),
        )
    )


def _run(connection: sqlite3.Connection, many: bool, operation: str, parameters: Any) -> _Ran:
    """On the connection's thread: the whole statement, its cursor closed behind it."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return _Ran(cursor.description, cursor.rowcount, cursor.lastrowid, rows)
    finally:
        cursor.close()


class _Cursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No cursor is opened here: that was a trip of its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = _Ran(None, -1, None, [])  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._trip(False, operation, parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._trip(True, operation, seq_of_parameters)

    async def _trip(self, many: bool, operation: Any, parameters: Any) -> _Ran:
        async with self._adapt_connection._execute_mutex:
            connection: Any = self._connection
            ran: _Ran = await connection._execute(
                _run, connection._conn, many, operation, parameters
            )
        ran.arraysize = self._cursor.arraysize
        self._cursor = ran  # type: ignore[assignment]
        self._rows = collections.deque(ran.rows)
        return ran

    async def _async_soft_close(self) -> None:
        return None  # closed already, on its thread

    def close(self) -> None:
        self._rows.clear()


class _Connection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls: type[AsyncAdapt_aiosqlite_cursor] = _Cursor


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Give it to `create_async_engine(module=...)` for a `sqlite+aiosqlite` URL."""

    def __init__(self) -> None:
        import aiosqlite

        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        adapted = super().connect(*arg, **kw)
        return _Connection(self, adapted._connection)
