"""API tokens: created with a secret shown once, kept as a SHA-256 hash, checked per request.

A check reads the database at most once per `recheck_seconds` per token and process: in
between, the process trusts what it read (`TokenCache`). So a revoke, made by any process
on any database, reaches every API process within that time, and a request costs no round
trip.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
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


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    expires_at: datetime | None
    # When the database read that admitted the token began (time.monotonic()): a revoke
    # committed after that read is seen once the entry is `recheck_seconds` old.
    read_at: float


class TokenCache:
    """Tokens this process read as live, keyed by the secret's hash (never the secret),
    each trusted for `recheck_seconds`. Refusals are never kept: an unknown, revoked or
    expired token is looked up every time."""

    def __init__(self, recheck_seconds: float, max_entries: int = 10_000) -> None:
        self.recheck_seconds = recheck_seconds
        self.max_entries = max_entries
        self._entries: dict[str, _Verified] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if time.monotonic() - entry.read_at >= self.recheck_seconds or _expired(
            entry.expires_at, utcnow()
        ):
            del self._entries[digest]
            return None
        return entry.principal

    def put(
        self, digest: str, principal: Principal, expires_at: datetime | None, read_at: float
    ) -> None:
        if len(self._entries) >= self.max_entries:
            now = time.monotonic()
            self._entries = {
                d: e for d, e in self._entries.items() if now - e.read_at < self.recheck_seconds
            }
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[digest] = _Verified(principal, expires_at, read_at)

    def forget(self, token_id: str) -> None:
        """Drop a token this process revoked, so its own next request is refused at once."""
        self._entries = {d: e for d, e in self._entries.items() if e.principal.token_id != token_id}


def _expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


# Built once: a statement made per request costs more CPU than the lookup it runs.
_BY_HASH = sa.select(
    col(Token.id),
    col(Token.name),
    col(Token.scopes),
    col(Token.expires_at),
    col(Token.last_used_at),
).where(col(Token.token_hash) == sa.bindparam("digest"), col(Token.revoked_at).is_(None))


async def authenticate(
    session: AsyncSession, secret: str, cache: TokenCache | None = None
) -> Principal | None:
    """The principal for a presented secret, or None if unknown, revoked or expired.

    With a cache, a token read as live less than `cache.recheck_seconds` ago is admitted
    without touching the session; otherwise the database decides."""
    digest = hash_secret(secret)
    if cache is not None:
        principal = cache.get(digest)
        if principal is not None:
            return principal
    read_at = time.monotonic()
    # Core, not the ORM: the row is read, never kept or changed.
    conn = await session.connection()
    row = (await conn.execute(_BY_HASH, {"digest": digest})).first()
    now = utcnow()
    principal = None
    if row is not None and not _expired(row.expires_at, now):
        principal = Principal(token_id=row.id, name=row.name, scopes=frozenset(row.scopes))
        if cache is not None:
            cache.put(digest, principal, row.expires_at, read_at)
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            await conn.execute(
                sa.update(Token).where(col(Token.id) == row.id).values(last_used_at=now)
            )
    # End the transaction either way: a long request (an SSE stream) that shares this
    # session must not hold a pooled connection while it streams.
    await session.commit()
    return principal
