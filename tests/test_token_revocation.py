"""A token check reads the database at most once per `token_recheck_seconds`, and a revoke
still stops the token in every API process within 1 s, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy import event
from sqlmodel import col

from settings import Settings
from store.engine import Database
from store.models import Token
from store.tokens import Scope, TokenCache, authenticate
from tests.conftest import api_process, make_token

REVOKED_EVERYWHERE_WITHIN_S = 1.0


async def whoami(base_url: str, secret: str) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        answer = await client.get("/whoami", headers={"Authorization": f"Bearer {secret}"})
        return answer.status_code


async def test_a_revoke_through_one_api_process_stops_the_token_in_every_other_within_1_s(
    settings: Settings, db: Database
) -> None:
    admin = await make_token(db, "admin", Scope.admin)
    async with api_process(settings) as first, api_process(settings, workers=2) as second:
        async with httpx.AsyncClient(
            base_url=first, headers={"Authorization": f"Bearer {admin}"}, timeout=30
        ) as client:
            made = await client.post("/auth/tokens", json={"name": "bot", "scopes": ["jobs:read"]})
            assert made.status_code == 201, made.text
            secret, token_id = made.json()["token"], made.json()["id"]
            # Every process admits the token, and so holds it as read live just now.
            assert await whoami(first, secret) == 200
            for _ in range(4):
                assert await whoami(second, secret) == 200
            revoked = await client.delete(f"/auth/tokens/{token_id}")
            assert revoked.status_code == 200, revoked.text
        done = time.monotonic()
        # The process that revoked it refuses it at once.
        assert await whoami(first, secret) == 401
        # The others within the bound: any request sent once it has passed is refused.
        await asyncio.sleep(max(0.0, done + REVOKED_EVERYWHERE_WITHIN_S - time.monotonic()))
        answers = [await whoami(base, secret) for base in (first, second, second, second)]
        assert answers == [401, 401, 401, 401]


async def test_a_token_read_as_live_is_trusted_without_a_statement_until_its_recheck(
    db: Database,
) -> None:
    secret = await make_token(db, "reader", Scope.jobs_read)
    statements: list[str] = []
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    cache = TokenCache(recheck_seconds=60)
    async with db.session() as session:
        first = await authenticate(session, secret, cache)
    assert first is not None and first.scopes == {"jobs:read"}
    read = len(statements)
    assert read > 0
    async with db.session() as session:
        assert await authenticate(session, secret, cache) == first
    assert len(statements) == read

    # Past its recheck, the database decides again, and a revoke is seen.
    async with db.session() as session:
        await session.exec(
            sa.update(Token).where(col(Token.name) == "reader").values(revoked_at=datetime.now(UTC))
        )
        await session.commit()
    cache.recheck_seconds = 0
    async with db.session() as session:
        assert await authenticate(session, secret, cache) is None


async def test_a_cached_token_is_refused_once_it_expires(db: Database) -> None:
    secret = await make_token(db, "short", Scope.jobs_read)
    async with db.session() as session:
        await session.exec(
            sa.update(Token)
            .where(col(Token.name) == "short")
            .values(expires_at=datetime.now(UTC) + timedelta(seconds=1))
        )
        await session.commit()
    cache = TokenCache(recheck_seconds=60)
    async with db.session() as session:
        assert await authenticate(session, secret, cache) is not None
    statements: list[str] = []
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    deadline = time.monotonic() + 30
    while True:
        async with db.session() as session:
            principal = await authenticate(session, secret, cache)
        if principal is None:
            break
        assert time.monotonic() < deadline
        assert statements == [], "a cached live token was read again before its recheck"
        await asyncio.sleep(0.05)
