"""`/api/v1/keys`: named credentials (a GitHub token) that tasks use by name.

A key's token is encrypted at rest (`store/secrets.py`) and never shown again: every answer
says `[redacted]` in its place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import Path, Request, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.auth import require
from api.deps import IdempotencyKeyDep, SessionDep, SettingsDep
from api.errors import ErrorBody
from api.named_rows import create_named, delete_named
from api.paging import Page, PageQuery, page
from api.route import strict_router
from store.models import Key
from store.secrets import Secrets
from store.tokens import Principal, Scope
from strict import Strict

router = strict_router(
    prefix="/api/v1/keys",
    tags=["keys"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)

Reader = Annotated[Principal, require(Scope.tasks_read)]
Writer = Annotated[Principal, require(Scope.tasks_write)]

NAME = r"^[A-Za-z0-9._-]{1,100}$"
Provider = Literal["github", "gitlab", "bitbucket", "generic"]
KeyName = Annotated[str, Path(max_length=200, description="The key's name")]


class KeyCreate(Strict):
    name: str = Field(
        pattern=NAME, description="Unique; tasks name the key with it", examples=["my-github-key"]
    )
    provider: Provider = Field(description="Whose token it is", examples=["github"])
    token: str = Field(
        min_length=1,
        max_length=4096,
        pattern=r"^[!-~]+$",
        description="The secret: printable ASCII, no whitespace. Stored encrypted, never shown",
        examples=["ghp_xxx"],
    )


class KeyPublic(BaseModel):
    name: str
    provider: str
    token: Literal["[redacted]"] = Field("[redacted]", description="Never the token itself")
    created_by: str = Field(description="The name of the API token that registered it")
    created_at: datetime


def _public(key: Key) -> KeyPublic:
    return KeyPublic(
        name=key.name, provider=key.provider, created_by=key.created_by, created_at=key.created_at
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a key",
    responses={409: {"model": ErrorBody, "description": "A key has this name"}},
)
async def create_key(
    body: KeyCreate,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    key: IdempotencyKeyDep,
) -> KeyPublic:
    """Encrypts the token at rest. The answer, like every later one, redacts it."""
    row = await create_named(
        session,
        principal,
        key,
        body,
        table=Key,
        name=body.name,
        kind="key",
        new_row=lambda: Key(
            name=body.name,
            provider=body.provider,
            token=Secrets.of(settings).encrypt(body.token),
            created_by=principal.name,
        ),
    )
    return _public(row)


@router.get("", summary="List keys")
async def list_keys(
    request: Request, _: Reader, session: SessionDep, params: PageQuery
) -> Page[KeyPublic]:
    """By name. Tokens are redacted."""
    total = (await session.exec(select(sa.func.count()).select_from(Key))).one()
    rows = await session.exec(
        select(Key).order_by(col(Key.name)).offset(params.skip).limit(params.limit)
    )
    return page(request, [_public(k) for k in rows], int(total), params)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a key",
    responses={404: {"model": ErrorBody, "description": "No key has this name"}},
)
async def delete_key(name: KeyName, _: Writer, session: SessionDep) -> None:
    """Forgets the key and its encrypted token; a task can no longer name it."""
    await delete_named(session, Key, "key", name)
