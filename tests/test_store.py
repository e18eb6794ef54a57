"""Migrations match the models on both databases, and datetimes stay UTC."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

from settings import Settings
from store import migrate, resources
from store.engine import Database, sync_url
from store.models import Event, StepRun, Token, utcnow
from store.tokens import Scope, create_token


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
