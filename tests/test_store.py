"""Migrations match the models on both databases, and datetimes stay UTC."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from settings import Settings
from store import migrate
from store.engine import Database, sync_url
from store.models import Token
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
