"""One async engine per process, for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from store import sqlite_driver


def sync_url(url: str) -> str:
    """The driver Alembic and the CLI use: pysqlite, or psycopg in sync mode."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return url


def async_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


BUSY_TIMEOUT_S = 10


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API and the worker (two processes) read while one writes; the busy
    # timeout makes a writer wait for the other instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_reset(dbapi_connection: Any, _record: Any, state: Any) -> None:
    # A rollback is a trip to the connection's own thread (aiosqlite), and a connection
    # back from a commit has nothing to roll back: roll back only one
    # that is still in a transaction (a session closed without commit already did). One
    # dropped without a loop to await on (garbage) is not reused: SQLAlchemy ends it.
    if state.terminate_only or not state.asyncio_safe:
        return
    if dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


class Database:
    """The engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Connections beyond pool_size are closed when returned, so a busy API would open
        # one (on SQLite a thread and the pragmas) for every other request: keep them all.
        # The peaks are what they were; on SQLite more connections would add threads, not
        # writes: its writers take turns on one lock (sqlite_driver.WriterTurn).
        if is_sqlite(url):
            kwargs: dict[str, Any] = {
                "pool_size": 15,
                "max_overflow": 0,
                "pool_reset_on_return": None,  # `_sqlite_reset` instead
            }
            if sqlite_driver.usable():
                kwargs["module"] = sqlite_driver.OneTripDBAPI(BUSY_TIMEOUT_S)
        else:
            # A server can drop connections (restart, failover); a local file cannot,
            # so only PostgreSQL pays a ping per checkout.
            kwargs = {"pool_size": 20, "max_overflow": 10, "pool_pre_ping": True}
        self.engine: AsyncEngine = create_async_engine(async_url(url), **kwargs)
        if is_sqlite(url):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "reset", _sqlite_reset)
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
