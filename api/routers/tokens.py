"""`/auth/tokens`: admins create, list and revoke API tokens; `/whoami` names the caller."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import sqlalchemy as sa
from fastapi import Path, Request, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.deps import Admin, AnyToken, IdempotencyKeyDep, SessionDep
from api.errors import ApiError, ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from settings import YEAR_S
from store import idempotency
from store.models import Token, new_id
from store.tokens import Scope, TokenNameTaken, create_token, revoke
from strict import Strict

router = strict_router(
    tags=["auth"], responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}}
)

TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$"


class TokenCreate(Strict):
    name: str = Field(pattern=TOKEN_NAME, description="Unique among live tokens", examples=["ci"])
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=len(Scope),
        description="What the token may do; `admin` satisfies every scope. Required: a "
        "token holds no scope unless given one. Approving a gate takes `approvals:write`.",
        examples=[["jobs:read", "jobs:write", "approvals:write"]],
    )
    expires_in: int | None = Field(
        None,
        ge=60,
        le=10 * YEAR_S,
        description="Seconds until the token expires (at most ten years); never when absent",
    )


class TokenPublic(BaseModel):
    id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TokenSecret(TokenPublic):
    token: str | None = Field(
        description="The secret. Shown once, at creation; null when a create is repeated"
    )


class Message(BaseModel):
    message: str


class WhoAmI(BaseModel):
    name: str = Field(description="The token's name")
    token_id: str
    scopes: list[str] = Field(description="What the token may do")
    message: str = Field(description="The token's name again, where the debug server has it")


def _public(token: Token) -> TokenPublic:
    return TokenPublic.model_validate(token, from_attributes=True)


@router.post(
    "/auth/tokens",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API token",
    responses={409: {"model": ErrorBody, "description": "A live token has this name"}},
)
async def create(
    body: TokenCreate, principal: Admin, session: SessionDep, key: IdempotencyKeyDep
) -> TokenSecret:
    """Creates a token and returns its secret once. Only the secret's hash is stored."""
    scope = "tokens"
    print_ = idempotency.fingerprint(body.model_dump(mode="json"))
    token_id = new_id()
    try:
        if key:
            earlier = await idempotency.find(session, scope, principal.token_id, key, print_)
            if earlier:
                return await _repeated(session, earlier)
        token, secret = await create_token(
            session,
            body.name,
            body.scopes,
            timedelta(seconds=body.expires_in) if body.expires_in else None,
            token_id=token_id,
        )
        if key:
            winner = await idempotency.claim(
                session, scope, principal.token_id, key, print_, token_id
            )
            if winner != token_id:
                return await _repeated(session, winner)
        await session.commit()
    except TokenNameTaken:
        raise ApiError(
            409, "TOKEN_NAME_TAKEN", f"name: a live token is named {body.name!r}"
        ) from None
    except idempotency.KeyReused:
        raise ApiError(
            422, "IDEMPOTENCY_KEY_REUSED", "header.Idempotency-Key: used before with another body"
        ) from None
    return TokenSecret(**_public(token).model_dump(), token=secret)


async def _repeated(session: SessionDep, token_id: str) -> TokenSecret:
    token = await session.get(Token, token_id)
    if token is None:
        raise not_found("token", token_id)
    return TokenSecret(**_public(token).model_dump(), token=None)


@router.get("/auth/tokens", summary="List API tokens")
async def list_tokens(
    request: Request,
    _: Admin,
    session: SessionDep,
    params: PageQuery,
    include_revoked: bool = False,
) -> Page[TokenPublic]:
    """Newest first. Secrets are never shown."""
    query = select(Token)
    if not include_revoked:
        query = query.where(col(Token.revoked_at).is_(None))
    total = (await session.exec(select(sa.func.count()).select_from(query.subquery()))).one()
    rows = await session.exec(
        query.order_by(col(Token.created_at).desc()).offset(params.skip).limit(params.limit)
    )
    return page(request, [_public(t) for t in rows], int(total), params)


@router.delete(
    "/auth/tokens/{token_id}",
    summary="Revoke an API token",
    responses={404: {"model": ErrorBody}},
)
async def revoke_token(
    request: Request,
    token_id: Annotated[str, Path(max_length=36)],
    _: Admin,
    session: SessionDep,
) -> Message:
    """Revoking is permanent, and revoking twice is harmless. This API process refuses the
    token at once; every other within `token_recheck_seconds` (under 1 s)."""
    token = await session.get(Token, token_id)
    if token is None:
        raise not_found("token", token_id)
    await revoke(session, token)
    await session.commit()
    request.app.state.tokens.forget(token_id)
    return Message(message="token revoked")


@router.get("/whoami", summary="Name the calling token")
async def whoami(principal: AnyToken) -> WhoAmI:
    return WhoAmI(
        name=principal.name,
        token_id=principal.token_id,
        scopes=sorted(principal.scopes),
        message=principal.name,
    )
