"""Rows known by a name the caller chooses (keys, MCP servers): the one create, honouring
`Idempotency-Key`, and the one delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import ApiError, not_found
from store import idempotency
from store.tokens import Principal

Row = TypeVar("Row", bound=SQLModel)


async def create_named(
    session: AsyncSession,
    principal: Principal,
    key: str | None,
    body: BaseModel,
    *,
    table: type[Row],
    name: str,
    kind: str,
    new_row: Callable[[], Row],
) -> Row:
    """The row named `name`, made now, or the one an earlier request with the same key made.
    A name taken by another request is a 409 `<KIND>_EXISTS`."""
    scope = str(table.__tablename__)
    # A digest of the body (a key's token included): equal requests match, nothing readable.
    print_ = idempotency.fingerprint(body.model_dump(mode="json"))
    exists = ApiError(409, f"{kind.upper()}_EXISTS", f"name: {name!r} is taken")
    try:
        if key and (
            earlier := await idempotency.find(session, scope, principal.token_id, key, print_)
        ):
            return await load_named(session, table, kind, earlier)
        if await session.get(table, name) is not None:
            raise exists
        row = new_row()
        session.add(row)
        try:
            await session.flush()
        except sa.exc.IntegrityError:
            raise exists from None
        if key:
            winner = await idempotency.claim(session, scope, principal.token_id, key, print_, name)
            if winner != name:
                return await load_named(session, table, kind, winner)
        await session.commit()
    except idempotency.KeyReused:
        raise ApiError(
            422, "IDEMPOTENCY_KEY_REUSED", "header.Idempotency-Key: used before with another body"
        ) from None
    return row


async def load_named(session: AsyncSession, table: type[Row], kind: str, name: str) -> Row:
    row = await session.get(table, name)
    if row is None:
        raise not_found(kind, name)
    return row


async def delete_named(session: AsyncSession, table: type[SQLModel], kind: str, name: str) -> None:
    await session.delete(await load_named(session, table, kind, name))
    await session.commit()
