"""`Annotated` dependency aliases every router uses."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.auth import require
from api.errors import ApiError
from api.session import request_session
from settings import Settings
from store.engine import Database
from store.tokens import Principal, Scope


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _temporal(request: Request) -> Client:
    return request.app.state.temporal.client  # type: ignore[no-any-return]


_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Repeat a create with the same key to get the same resource back",
    ),
]


async def _idempotency_key(key: IdempotencyKeyHeader = None) -> str | None:
    return checked_key(key)


def checked_key(key: str | None) -> str | None:
    if key is not None and not _KEY_PATTERN.match(key):
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            "header.Idempotency-Key: 1 to 255 printable ASCII characters, no spaces",
        )
    return key


SettingsDep = Annotated[Settings, Depends(_settings)]
DatabaseDep = Annotated[Database, Depends(_database)]
SessionDep = Annotated[AsyncSession, Depends(request_session)]
TemporalDep = Annotated[Client, Depends(_temporal)]
IdempotencyKeyDep = Annotated[str | None, Depends(_idempotency_key)]

Admin = Annotated[Principal, require(Scope.admin)]
AnyToken = Annotated[Principal, require()]
