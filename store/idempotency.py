"""Idempotency keys: a repeated create with the same key returns the resource it made."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import IdempotencyKey


class KeyReused(Exception):
    """The key was used before for a different request body."""


def fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def find(
    session: AsyncSession, scope: str, principal: str, key: str, print_: str
) -> str | None:
    """The resource id an earlier identical request made, or None for a new key."""
    row = await session.get(IdempotencyKey, (scope, principal, key))
    if row is None:
        return None
    if row.fingerprint != print_:
        raise KeyReused(key)
    return row.resource_id


async def claim(
    session: AsyncSession, scope: str, principal: str, key: str, print_: str, resource_id: str
) -> str:
    """Record the key in the caller's transaction; returns the winning resource id.

    Called in the same transaction as the resource insert, so a crash leaves neither.
    """
    session.add(
        IdempotencyKey(
            scope=scope, principal=principal, key=key, fingerprint=print_, resource_id=resource_id
        )
    )
    try:
        await session.flush()
    except sa.exc.IntegrityError:
        await session.rollback()
        result = await session.exec(
            select(IdempotencyKey).where(
                IdempotencyKey.scope == scope,
                IdempotencyKey.principal == principal,
                IdempotencyKey.key == key,
            )
        )
        row = result.one()
        if row.fingerprint != print_:
            raise KeyReused(key) from None
        return row.resource_id
    return resource_id
