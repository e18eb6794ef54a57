"""The one auth dependency: a token from `Authorization: Bearer` or `X-API-Key`, then scopes.

Each app keeps a `TokenCache` (`app.state.tokens`): a token is read from the database at
most once per `token_recheck_seconds`, so a revoke anywhere reaches this process within
that time (see store/tokens.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import ApiError
from api.session import request_session
from store.tokens import Principal, Scope, authenticate

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <token>`")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def current_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    session: Annotated[AsyncSession, Depends(request_session)],
) -> Principal:
    secret = bearer.credentials if bearer else api_key
    if not secret:
        raise ApiError(
            401,
            "NOT_AUTHENTICATED",
            "missing token: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'",
            _CHALLENGE,
        )
    principal = await authenticate(session, secret, request.app.state.tokens)
    if principal is None:
        raise ApiError(401, "INVALID_TOKEN", "token is unknown, revoked or expired", _CHALLENGE)
    return principal


def require(*scopes: Scope) -> Any:
    """A dependency that admits a token holding every one of `scopes` (admin holds all)."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        return admit(principal, scopes)

    return Depends(check)


def admit(principal: Principal, scopes: tuple[Scope, ...]) -> Principal:
    """The principal, when it holds every one of `scopes`; else a 403."""
    missing = [s.value for s in scopes if not principal.allows(s)]
    if missing:
        raise ApiError(
            403, "INSUFFICIENT_SCOPE", f"token {principal.name!r} lacks scope {', '.join(missing)}"
        )
    return principal
