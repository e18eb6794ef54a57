"""Migrations match the models on both databases, and datetimes stay UTC."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

from settings import Settings
from store import events, migrate, resources, sqlite_writes
from store.engine import BUSY_TIMEOUT_S, Database, sync_url
from store.models import Event, StepRun, Token, utcnow
from store.sqlite_driver import CHECKPOINT_BYTES, SQLITE_CHECKPOINT_PAGES
from store.tokens import Scope, create_token
from store.writes import written


def test_migrations_match_the_models(settings: Settings) -> None:
    engine = sa.create_engine(sync_url(settings.db_url))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert diff == []


async def test_upgrade_is_repeatable_and_at_head(settings: Settings, db: Database) -> None:
    migrate.upgrade(settings.db_url)
    assert await migrate.current_revision(db) == migrate.head_revision()


async def test_datetimes_come_back_aware_utc(db: Database) -> None:
    async with db.session() as session:
        token, _ = await create_token(session, "tz", [Scope.jobs_read])
        await session.commit()
    async with db.session() as session:
        loaded = await session.get(Token, token.id)
    assert loaded is not None and loaded.created_at.utcoffset() is not None
    assert loaded.created_at == token.created_at


async def test_plain_statements_write_what_they_are_given_and_refuse_unknown_columns(
    db: Database,
) -> None:
    """`resources.insert`, `insert_new` and `update` run statements built once with
    parameters: JSON, None and times go in as given, a repeat adds nothing, and a key that
    names no column is an error rather than a value silently dropped."""
    started = utcnow()
    row = {
        "key": "run/1",
        "attempt": 1,
        "resource_id": "job-1",
        "outcome": "started",
        "result": None,
        "created_at": started,
    }
    async with db.session() as session:
        assert await resources.insert_new(session, StepRun, ("key", "attempt"), row)
        assert not await resources.insert_new(session, StepRun, ("key", "attempt"), row)
        where = {"key": "run/1", "attempt": 1}
        result = {"exit_code": 0, "tail": ["ok"], "diff": None}
        await resources.update(session, StepRun, where, {"outcome": "succeeded", "result": result})
        await resources.insert(
            session,
            Event,
            {
                "resource_kind": "job",
                "resource_id": "job-1",
                "type": "x",
                "stage": None,
                "status": None,
                "message": "",
                "payload": {"a": [1]},
                "final": False,
                "created_at": started,
            },
        )
        with pytest.raises(ValueError, match="step_runs has no column outcom"):
            await resources.update(session, StepRun, where, {"outcom": "failed"})
        with pytest.raises(ValueError, match="jobs has no column stge"):
            await resources.set_fields(session, "job", "job-1", stge="build")
        await session.commit()
    async with db.session() as session:
        stored = await session.get(StepRun, ("run/1", 1))
        event = (await session.exec(select(Event).where(Event.resource_id == "job-1"))).one()
    assert stored is not None and (stored.outcome, stored.result) == ("succeeded", result)
    assert stored.created_at == started
    assert event.payload == {"a": [1]} and event.stage is None


async def test_a_flush_stores_what_sqlalchemy_stores(db: Database) -> None:
    """On SQLite, `Writes` runs its UPDATEs and its events' INSERT on the connection itself
    (store/sqlite_writes.py) with each column type's own conversion: a row updated that way
    holds what the same update through SQLAlchemy gives its twin, JSON's null and times
    included, and so does an event; a value a column refuses fails as SQLAlchemy's error,
    and a batch that fails leaves nothing written. PostgreSQL takes SQLAlchemy's way."""
    started = utcnow()
    row = {"attempt": 1, "resource_id": "r", "outcome": "started", "result": {"a": 1}}
    changes: list[dict[str, Any]] = [
        {"outcome": "succeeded", "result": {"tail": ["ok", "é"], "n": 2.5, "none": None}},
        # Another offset than UTC: the column's own conversion (UTCDateTime) must run.
        {"result": None, "created_at": started.astimezone(timezone(timedelta(hours=2)))},
        {"resource_id": "r2", "outcome": "failed"},
    ]
    async with db.session() as session:
        for key in ("direct", "sqlalchemy"):
            await resources.insert(session, StepRun, row | {"key": key, "created_at": started})
        await session.commit()
    for n, values in enumerate(changes):
        said: events.EventFields = {
            "stage": None if n else "s",
            "payload": {"n": n, "é": None},
            "final": n == 2,
        }
        async with db.session() as session:
            async with written(session) as writes:
                writes.update(StepRun, {"key": "direct", "attempt": 1}, values)
                writes.event("job", "direct", "t", **said)
                writes.event("job", "direct", "u", message="second")
            await resources.update(session, StepRun, {"key": "sqlalchemy", "attempt": 1}, values)
            await events.append_many(
                session,
                [
                    events.row("job", "sqlalchemy", "t", **said),
                    events.row("job", "sqlalchemy", "u", message="second"),
                ],
            )
            await session.commit()
    async with db.session() as session:
        direct = await sqlite_writes.direct_writes(session)
        assert (direct is not None) == db.url.startswith("sqlite")
        if direct is not None:  # rows of one INSERT name the same columns, or none is built
            first = events.stamped([events.row("job", "x", "t")])[0]
            short = {k: v for k, v in first.items() if k != "stage"}
            with pytest.raises(ValueError, match="other columns"):
                direct.insert_many(Event, [first, short])
            with pytest.raises(ValueError, match="names every column"):  # no default filled
                direct.insert_many(Event, [short])
        stored = (await session.exec(sa.text("SELECT * FROM step_runs ORDER BY key"))).all()  # type: ignore[call-overload]
        logged = (await session.exec(sa.text("SELECT * FROM events ORDER BY id"))).all()  # type: ignore[call-overload]
        with pytest.raises(sa.exc.IntegrityError):  # outcome is NOT NULL
            async with written(session) as writes:
                writes.update(StepRun, {"key": "sqlalchemy", "attempt": 1}, {"outcome": "lost"})
                writes.update(StepRun, {"key": "direct", "attempt": 1}, {"outcome": None})
                writes.event("job", "direct", "lost")
        await session.rollback()
        with pytest.raises(sa.exc.StatementError, match="naive datetime"):
            async with written(session) as writes:
                naive = started.replace(tzinfo=None)
                writes.update(StepRun, {"key": "direct", "attempt": 1}, {"created_at": naive})
    direct_row, sqlalchemy_row = (dict(r._mapping) for r in stored)
    assert direct_row.pop("key") == "direct" and sqlalchemy_row.pop("key") == "sqlalchemy"
    assert direct_row == sqlalchemy_row
    by_owner: dict[str, list[dict[str, Any]]] = {"direct": [], "sqlalchemy": []}
    for r in logged:
        event = dict(r._mapping)
        del event["id"]
        # Stamped at each flush: not the same instant (read below, as the model reads it).
        event["created_at"] = type(event["created_at"])
        by_owner[event.pop("resource_id")].append(event)
    assert len(by_owner["direct"]) == 6 and by_owner["direct"] == by_owner["sqlalchemy"]
    async with db.session() as session:
        kept = await session.get(StepRun, ("direct", 1))
        twin = await session.get(StepRun, ("sqlalchemy", 1))
        stamps = (await session.exec(select(Event.created_at))).all()
    assert kept is not None and kept.result is None and kept.created_at == started
    assert (kept.resource_id, kept.outcome) == ("r2", "failed")
    assert twin is not None and twin.outcome == "failed"
    assert len(stamps) == 12 and all(started <= stamp <= utcnow() for stamp in stamps)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'trips.db'}"
    migrate.upgrade(url)
    return Database(url)


async def test_sqlite_statements_take_one_trip_each_and_keep_their_results(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call aiosqlite runs on its connection's thread is a trip (`sqlite_driver`):
    a read takes one, a write or a commit none (they run on the loop), and rows, rowcount
    and errors come back as SQLAlchemy's."""
    trips: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", ""))
        return await execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    async with sqlite_db.session() as session:  # the pool's connection, opened beforehand
        await session.exec(select(Event).limit(1))
    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    events = resources.core(Event)
    rows = [
        {"resource_kind": "job", "resource_id": f"j{i}", "type": "t", "message": "", "payload": {}}
        | {"stage": None, "status": None, "final": False, "created_at": utcnow()}
        for i in range(3)
    ]
    async with sqlite_db.session() as session:
        await session.exec(sa.insert(events), params=rows)  # executemany
        changed = await session.exec(
            sa.update(events).where(events.c.resource_id != "j0").values(type="u")
        )
        found = (await session.exec(select(Event.resource_id, Event.type))).all()
        await session.commit()
    assert changed.rowcount == 2
    assert sorted(found) == [("j0", "t"), ("j1", "u"), ("j2", "u")]
    assert trips == ["_run_all"]  # the read; the writes and the commit run on the loop
    trips.clear()
    async with sqlite_db.session() as session:
        with pytest.raises(sa.exc.IntegrityError):
            await session.exec(sa.insert(events), params={**rows[0], "id": 1})
    # A session that ended without a commit is rolled back: nothing is left half-written,
    # and the next writer is not locked out.
    async with sqlite_db.session() as session:
        await session.exec(sa.insert(events), params={**rows[0], "resource_id": "lost"})
    async with sqlite_db.session() as session:
        await session.exec(sa.insert(events), params={**rows[0], "resource_id": "kept"})
        await session.commit()
        ids = (await session.exec(select(Event.resource_id))).all()
    assert "lost" not in ids and "kept" in ids
    await sqlite_db.dispose()


async def test_a_sqlite_connection_back_in_the_pool_mid_transaction_is_rolled_back(
    sqlite_db: Database,
) -> None:
    """The pool's own rollback is skipped after a commit (`_sqlite_reset`), not when a
    connection comes back with a transaction open below SQLAlchemy's."""
    async with sqlite_db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: aiosqlite.Connection = raw.driver_connection  # type: ignore[assignment]
        await driver.execute(
            "INSERT INTO step_runs (key, attempt, resource_id, outcome, created_at)"
            " VALUES ('open', 1, 'r', 'started', '2026-01-01')"
        )
        assert driver.in_transaction
    async with sqlite_db.session() as session:
        await resources.insert(
            session,
            StepRun,
            {"key": "next", "attempt": 1, "resource_id": "r", "outcome": "started"}
            | {"result": None, "created_at": utcnow()},
        )
        await session.commit()
        keys = (await session.exec(select(StepRun.key))).all()
    assert keys == ["next"]
    await sqlite_db.dispose()


async def test_sqlite_writers_of_one_process_take_turns_in_order(tmp_path: Path) -> None:
    """While one session holds a write transaction, the others' writes wait for their
    turn and get it in order of arrival (SQLite's busy handler would retry in its own
    order), a read does not wait, and a turn not given back in time fails as SQLite's busy
    timeout does."""
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    migrate.upgrade(url)
    db = Database(url)
    writers = db.engine.sync_engine.dialect.dbapi.writers  # type: ignore[union-attr]
    writers.timeout_s = 1.0
    row = {"attempt": 1, "resource_id": "r", "outcome": "started", "result": None}
    order: list[str] = []

    async def write(key: str) -> None:
        async with db.session() as session:
            await resources.insert(session, StepRun, row | {"key": key, "created_at": utcnow()})
            order.append(key)
            await session.commit()

    async with db.session() as holder:
        await resources.insert(holder, StepRun, row | {"key": "first", "created_at": utcnow()})
        queued = []
        for key in ("a", "b", "c", "d"):
            queued.append(asyncio.create_task(write(key)))
            await asyncio.sleep(0.02)  # each is waiting before the next arrives
        async with db.session() as reader:
            assert (await reader.exec(select(StepRun.key))).all() == []  # not blocked
        assert order == []
        await holder.commit()
    await asyncio.gather(*queued)
    assert order == ["a", "b", "c", "d"]
    async with db.session() as holder:
        await resources.insert(holder, StepRun, row | {"key": "held", "created_at": utcnow()})
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            await write("late")
        assert 0.9 < time.monotonic() - started < 5
    async with db.session() as session:  # the holder's rollback gave the turn back
        await write("after")
        keys = sorted((await session.exec(select(StepRun.key))).all())
    assert keys == ["a", "after", "b", "c", "d", "first"]
    # A write cancelled around the moment it takes its turn is cancelled, and leaves no row
    # unless it got past its INSERT (the cancel may then land after its commit).
    for n in range(1, 8):
        task = asyncio.create_task(write(f"cancelled-{n}"))
        for _ in range(n):
            await asyncio.sleep(0)
        if task.cancel():
            with pytest.raises(asyncio.CancelledError):
                await task
            async with db.session() as session:
                found = (await session.exec(select(StepRun.key))).all()
            assert f"cancelled-{n}" not in found or f"cancelled-{n}" in order
        else:
            await task
    await write("last")  # and the turn was given back each time
    await db.dispose()


async def test_a_sqlite_write_that_meets_another_process_lock_waits_off_the_loop(
    tmp_path: Path,
) -> None:
    """Writes run on the event loop; one that finds SQLite's lock held by another process
    (here a connection of its own, as the worker's would be) waits on its connection's
    thread with the busy timeout, the loop going on meanwhile, and then writes."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    migrate.upgrade(url)
    db = Database(url)
    row = {"attempt": 1, "resource_id": "r", "outcome": "started", "result": None}
    async with db.session() as session:  # the pool's connection, the file in WAL mode
        await session.exec(select(StepRun.key))
    other = sqlite3.connect(tmp_path / "other.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the other process holds the write lock
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        async with db.session() as session:
            writing = asyncio.create_task(
                resources.insert(session, StepRun, row | {"key": "k", "created_at": utcnow()})
            )
            await asyncio.sleep(0.3)
            assert not writing.done() and ticks >= 10  # waiting, and not on the loop
            other.execute("ROLLBACK")
            await writing
            await session.commit()
        async with db.session() as session:
            assert (await session.exec(select(StepRun.key))).all() == ["k"]
        # A flush's batch (sqlite_writes) waits the same way, and runs once, whole.
        other.execute("BEGIN IMMEDIATE")

        async def flush() -> None:
            async with db.session() as session, written(session) as writes:
                writes.update(StepRun, {"key": "k", "attempt": 1}, {"outcome": "succeeded"})
                writes.event("job", "r", "stage_finished")

        flushing = asyncio.create_task(flush())
        await asyncio.sleep(0.3)
        assert not flushing.done()
        other.execute("ROLLBACK")
        await flushing
        async with db.session() as session:
            assert (await session.exec(select(StepRun.outcome))).all() == ["succeeded"]
            assert await events.count(session, "r") == 1
        # With the lock free, writes take the loop's way: the first of a transaction with
        # a busy timeout of 0 (the next hold the lock), which goes back to the connection's
        # own after it, whatever the writers' turns wait.
        db.engine.sync_engine.dialect.dbapi.writers.timeout_s = 1.0  # type: ignore[union-attr]
        async with db.session() as session:
            conn = await session.connection()
            raw = (await conn.get_raw_connection()).driver_connection._conn  # type: ignore[union-attr]
            traced: list[str] = []
            raw.set_trace_callback(traced.append)
            for key in ("k2", "k3"):
                await resources.insert(session, StepRun, row | {"key": key, "created_at": utcnow()})
            raw.set_trace_callback(None)
            timeout = (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar()
            assert timeout == BUSY_TIMEOUT_S * 1000
            await session.commit()
        assert [t for t in traced if t.startswith("PRAGMA busy_timeout")] == [
            "PRAGMA busy_timeout=0",
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}",
        ], traced
    finally:
        ticker.cancel()
        other.close()
        await db.dispose()


async def test_a_sqlite_file_not_in_wal_mode_commits_on_its_thread(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without WAL (a file system that cannot share its memory), a commit may wait for
    readers: it goes to the connection's thread, which waits with the busy timeout."""
    trips: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", ""))
        return await execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    async with sqlite_db.engine.connect() as conn:  # the pool's one connection, alone
        assert (await conn.exec_driver_sql("PRAGMA journal_mode=DELETE")).scalar() == "delete"
    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    row = {"attempt": 1, "resource_id": "r", "outcome": "started", "result": None}
    async with sqlite_db.session() as session:
        await resources.insert(session, StepRun, row | {"key": "k", "created_at": utcnow()})
        await session.commit()
    assert trips == ["commit"]
    async with sqlite_db.session() as session:
        assert (await session.exec(select(StepRun.key))).all() == ["k"]
    await sqlite_db.dispose()


async def test_sqlite_checkpoints_run_on_the_connection_thread(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits run on the loop; SQLite's own checkpoint, which copies and syncs the log in
    whichever commit crosses its size, is set far off, and one runs on the connection's
    thread once the log passes `CHECKPOINT_BYTES`: the log is moved into the database."""
    trips: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", ""))
        return await execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    database = Path(sqlite_db.url.removeprefix("sqlite:///"))
    empty = database.stat().st_size
    blob = "x" * 65536
    for n in range((CHECKPOINT_BYTES // 65536) + 8):
        async with sqlite_db.session() as session:
            await events.append(session, "job", f"j{n}", "t", payload={"blob": blob})
            await session.commit()
        if "_checkpoint" in trips:
            break
    assert "_checkpoint" in trips, "no checkpoint after writing past CHECKPOINT_BYTES"
    assert database.stat().st_size > empty + CHECKPOINT_BYTES // 2  # the log's pages moved
    async with sqlite_db.engine.connect() as conn:
        pages = (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
        assert pages == SQLITE_CHECKPOINT_PAGES
    await sqlite_db.dispose()
