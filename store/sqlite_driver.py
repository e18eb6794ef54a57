"""SQLAlchemy's aiosqlite driver: writes and commits on the event loop, and any other
statement in one trip to the connection's thread.

aiosqlite runs every call on a thread of the connection's own, and SQLAlchemy's adapter
makes three or four such trips a statement: open a cursor, execute, fetch the rows, close
the cursor. Each trip wakes that thread, then the event loop: about 0.15 ms on a two-core
machine, and most of what a step's records cost (a `true` step's six statements and two
commits took 21 trips). Here a statement opens its cursor, executes, reads its rows and
closes the cursor in one function run on that thread; SQLAlchemy sees what it would have
seen (the rows, `description`, `rowcount`, `lastrowid`).

Server-side cursors (streamed results) keep SQLAlchemy's own adapter.

A write, and a commit, run on the event loop itself, without that trip (`_run_now`): a
row write by key takes microseconds, less than waking two threads. A write waits for
nothing there: SQLite's busy timeout is 0 for it, and one that finds another process
holding the lock goes to the connection's thread, to wait for it as any statement does.
A batch of writes (`write`: a `Writes` flush) runs as one, the same way: on the loop, or,
when its first statement meets another process's lock, all of it on the thread. A commit
in WAL mode takes no lock it does not hold already; the checkpoints that sync
the log into the database run on the thread (`CHECKPOINT_BYTES`). Reads stay on the
thread, since some scan and the loop must not wait for them.

SQLite lets one connection write at a time. A writer that finds the lock taken sleeps in
SQLite's busy handler (1, 2, 5, 10… ms) and tries again: with 20 creates in flight on 15
pooled connections, that was four sleeps and ~50 futex calls a create. Here the writers of
one engine (a `Database`) take turns instead (`WriterTurn`): a connection waits for its
turn before its first write and gives it back when its transaction ends, in order of
arrival. Readers never wait; another engine or process (the worker) still meets SQLite's
own lock and busy timeout.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import sqlite3
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

logger = logging.getLogger("pilothouse.store")


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


# A statement as this module runs it: (SQL, parameters, whether they are many rows).
Statement = tuple[str, Any, bool]


def _run_all(connection: sqlite3.Connection, statements: Sequence[Statement]) -> _Ran:
    """Statements in order, in one call; what the last one returned."""
    ran = _Ran(None, -1, None, [])
    for operation, parameters, many in statements:
        ran = _run(connection, many, operation, parameters)
    return ran


def _run_now(
    connection: sqlite3.Connection, statements: Sequence[Statement], busy_ms: int, *, first: bool
) -> _Ran | None:
    """On the event loop: writes, or None when another process holds SQLite's lock. A
    write that cannot lock wrote nothing; as its transaction's first write it also let go
    of its read snapshot, so the retry on the thread, with the busy timeout, waits as it
    would have. Later writes hold the lock already: only the `first` runs with a busy
    timeout of 0, and only the first statement of a batch may come back as busy, never
    one after a write that took effect."""
    (operation, parameters, many), rest = statements[0], statements[1:]
    if first:
        connection.execute("PRAGMA busy_timeout=0")
    try:
        ran = _run(connection, many, operation, parameters)
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
            return None
        raise
    finally:
        if first:
            connection.execute(f"PRAGMA busy_timeout={busy_ms}")
    return _run_all(connection, rest) if rest else ran


# SQLite's own checkpoint (every 1000 pages, ~4 MB) copies the log into the database and
# syncs both, in whichever commit crosses that size: on the loop, tens of milliseconds.
# Here a commit that leaves the log larger than this runs one on its connection's thread;
# SQLite's own is set ten times further off, in case ours stops. The log is cut back to
# this size when it starts over.
CHECKPOINT_BYTES = 4 * 1024 * 1024
SQLITE_CHECKPOINT_PAGES = 10_000


@dataclass(frozen=True)
class _Setup:
    """What a connection's writes and commits need of its settings, read once."""

    busy_ms: int
    log: Path | None  # the write-ahead log; None when not in WAL mode


def _setup(connection: sqlite3.Connection) -> _Setup:
    busy_ms = int(connection.execute("PRAGMA busy_timeout").fetchone()[0])
    mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if mode != "wal":
        return _Setup(busy_ms, None)
    database = connection.execute("PRAGMA database_list").fetchone()[2]
    connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
    connection.execute(f"PRAGMA journal_size_limit={CHECKPOINT_BYTES}")
    return _Setup(busy_ms, Path(f"{database}-wal"))


def _log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def _checkpoint(connection: sqlite3.Connection) -> None:
    """On the connection's thread: what readers do not hold back of the log goes into the
    database (PASSIVE: it waits for no one)."""
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


# Statements that take SQLite's write lock; a SELECT does not.
_WRITES = re.compile(
    r"\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|BEGIN\s+(IMMEDIATE|EXCLUSIVE))\b", re.I
)


class WriterTurn:
    """One write transaction at a time on this engine, in order of arrival. A wait longer
    than `timeout_s` fails as SQLite's busy timeout does."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # One lock per event loop: an asyncio lock belongs to the loop it first waits on.
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def lock(self) -> asyncio.Lock:
        return self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


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
        return await self._trip([(operation, parameters, False)])

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._trip([(operation, seq_of_parameters, True)])

    async def _trip(self, statements: Sequence[Statement]) -> _Ran:
        """Statements of one kind, reads or writes, in one go."""
        adapted: Any = self._adapt_connection
        connection: Any = self._connection
        write = _WRITES.match(statements[0][0]) is not None
        # The transaction's first write: the ones after it hold SQLite's lock already.
        first = write and adapted.turn is None
        if first:
            await adapted.take_turn()
        try:
            async with adapted._execute_mutex:
                ran = None
                if write:
                    busy_ms = adapted.setup().busy_ms
                    ran = _run_now(connection._conn, statements, busy_ms, first=first)
                if ran is None:
                    ran = await connection._execute(_run_all, connection._conn, statements)
        finally:
            if not adapted.in_transaction():
                adapted.end_turn()  # a statement outside a transaction, or a failed BEGIN
        ran.arraysize = self._cursor.arraysize
        self._cursor = ran  # type: ignore[assignment]
        self._rows = collections.deque(ran.rows)
        return ran

    async def _async_soft_close(self) -> None:
        return None  # closed already, on its thread

    def close(self) -> None:
        self._rows.clear()


class _Connection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("settings", "turn", "turn_loop")
    _cursor_cls: type[AsyncAdapt_aiosqlite_cursor] = _Cursor

    def __init__(self, dbapi: OneTripDBAPI, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.turn: asyncio.Lock | None = None
        self.turn_loop: asyncio.AbstractEventLoop | None = None
        self.settings: _Setup | None = None  # read at the first write or commit

    async def take_turn(self) -> None:
        lock = self.dbapi.writers.lock()
        # Not `wait_for`: on 3.11 it drops a cancel that lands as the lock is acquired,
        # and the cancelled write would go on to commit.
        try:
            async with asyncio.timeout(self.dbapi.writers.timeout_s):
                await lock.acquire()
        except TimeoutError:
            raise sqlite3.OperationalError("database is locked") from None
        self.turn, self.turn_loop = lock, asyncio.get_running_loop()

    def end_turn(self) -> None:
        lock, loop, self.turn, self.turn_loop = self.turn, self.turn_loop, None, None
        if lock is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            lock.release()
        elif not loop.is_closed():
            # A connection the garbage collector ends, maybe on another thread.
            loop.call_soon_threadsafe(lock.release)

    def commit(self) -> None:
        if not self._connection._connection:
            return  # closed, as SQLAlchemy's own adapter has it
        log = self.setup().log
        wrote = self.turn is not None
        try:
            if log is None:  # not in WAL mode: the commit may wait for readers
                super().commit()
            else:
                # On the loop, as writes are: a commit in WAL mode takes no lock it does
                # not hold already, and appends to the log without a sync.
                self._connection._conn.commit()
                if wrote:
                    # Before the turn is given back: this process's writers wait, so the
                    # log can start over once it is all in the database.
                    self._checkpoint(log)
        except Exception as error:
            self._handle_exception(error)
        finally:
            # A commit that failed leaves the transaction, and SQLite's lock, to a rollback.
            if not self.in_transaction():
                self.end_turn()

    def _checkpoint(self, log: Path) -> None:
        """On the connection's thread, once the log passes `CHECKPOINT_BYTES`. A cancel
        that lands meanwhile comes after the commit took effect."""
        try:
            if _log_size(log) > CHECKPOINT_BYTES:
                await_(self._connection._execute(_checkpoint, self._connection._conn))
        except Exception:
            # Committed all the same; the next commit tries again, and SQLite's own
            # checkpoint, set far off, bounds the log meanwhile.
            logger.warning("checkpoint of %s failed", log, exc_info=True)

    def setup(self) -> _Setup:
        if self.settings is None:
            self.settings = _setup(self._connection._conn)
        return self.settings

    def in_transaction(self) -> bool:
        try:
            return bool(self._connection._conn.in_transaction)
        except ValueError:  # aiosqlite's "no active connection": closed
            return False

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.end_turn()

    def terminate(self) -> None:
        try:
            super().terminate()
        finally:
            self.end_turn()


def is_own(connection: Any) -> bool:
    """Whether a pooled connection's DBAPI connection is this module's."""
    return isinstance(connection, _Connection)


async def write(connection: Any, statements: Sequence[Statement]) -> None:
    """Run writes on `connection` (`is_own`) as SQLAlchemy's execute would reach it here,
    all in one go: in its transaction and this engine's writer turn, on the loop unless
    another process holds SQLite's lock."""
    assert statements and all(_WRITES.match(s[0]) for s in statements), statements
    await _Cursor(connection)._trip(statements)


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Give it to `create_async_engine(module=...)` for a `sqlite+aiosqlite` URL."""

    def __init__(self, busy_timeout_s: float) -> None:
        import aiosqlite

        super().__init__(aiosqlite, sqlite3)
        self.writers = WriterTurn(busy_timeout_s)

    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        # Writes run on the loop's thread (`_run_now`), the rest on the connection's own;
        # never at once, as SQLAlchemy runs one statement at a time on a connection.
        adapted = super().connect(*arg, **{**kw, "check_same_thread": False})
        return _Connection(self, adapted._connection)
