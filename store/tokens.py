"""API tokens: created with a secret shown once, kept as a SHA-256 hash, checked per request."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import Token, utcnow

SECRET_PREFIX = "ph_"
# Writing last_used_at on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Scope(StrEnum):
    admin = "admin"
    sessions_read = "sessions:read"
    sessions_write = "sessions:write"
    commands_write = "commands:write"
    artifacts_read = "artifacts:read"
    runs_read = "runs:read"
    runs_write = "runs:write"
    jobs_read = "jobs:read"
    jobs_write = "jobs:write"
    tasks_read = "tasks:read"
    tasks_write = "tasks:write"
    approvals_write = "approvals:write"


class TokenNameTaken(Exception):
    """A live token already has this name."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name and scopes."""

    token_id: str
    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return Scope.admin in self.scopes or scope in self.scopes


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str) -> list[Scope]:
    """`"admin, jobs:read"` → scopes; raises ValueError naming an unknown one."""
    scopes: list[Scope] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            scopes.append(Scope(part))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {part!r}; known scopes: {known}") from None
    return scopes


async def create_token(
    session: AsyncSession,
    name: str,
    scopes: list[Scope],
    expires_in: timedelta | None = None,
    token_id: str | None = None,
) -> tuple[Token, str]:
    """Insert a token and return it with its secret, which is never stored."""
    if await get_live_by_name(session, name) is not None:
        raise TokenNameTaken(name)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    token = Token(
        name=name,
        token_hash=hash_secret(secret),
        scopes=sorted({s.value for s in scopes}),
        created_at=now,
        updated_at=now,
        expires_at=now + expires_in if expires_in else None,
    )
    if token_id:
        token.id = token_id
    session.add(token)
    try:
        await session.flush()
    except sa.exc.IntegrityError:
        # Two creates with one name raced; the unique index kept one.
        await session.rollback()
        raise TokenNameTaken(name) from None
    return token, secret


async def get_live_by_name(session: AsyncSession, name: str) -> Token | None:
    result = await session.exec(
        select(Token).where(Token.name == name, col(Token.revoked_at).is_(None))
    )
    return result.first()


async def count_tokens(session: AsyncSession) -> int:
    result = await session.exec(select(sa.func.count()).select_from(Token))
    return int(result.one())


async def revoke(session: AsyncSession, token: Token) -> Token:
    if token.revoked_at is None:
        token.revoked_at = token.updated_at = utcnow()
        session.add(token)
        await session.flush()
    return token


async def authenticate(session: AsyncSession, secret: str) -> Principal | None:
    """The principal for a presented secret, or None if unknown, revoked or expired."""
    result = await session.exec(select(Token).where(Token.token_hash == hash_secret(secret)))
    token = result.first()
    now = utcnow()
    principal = None
    if (
        token is not None
        and token.revoked_at is None
        and not (token.expires_at is not None and token.expires_at <= now)
    ):
        principal = Principal(token_id=token.id, name=token.name, scopes=frozenset(token.scopes))
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            await session.exec(
                sa.update(Token).where(col(Token.id) == token.id).values(last_used_at=now)
            )
    # End the transaction either way: a long request (an SSE stream) that shares this
    # session must not hold a pooled connection while it streams.
    await session.commit()
    return principal
