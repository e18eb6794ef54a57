"""Walk every route of the app: only probes, metrics and docs answer without a token, and
Telegram's webhook, which has a secret of its own."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr
from starlette.routing import BaseRoute

from api.app import create_app
from settings import Settings
from store.tokens import Scope
from tests.conftest import Api, make_token

PUBLIC = {
    "/healthz",
    "/api/v1/healthz",
    "/readyz",
    "/health",
    "/ready",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
    "/api/docs",
    "/api/docs/openapi.yaml",
    "/docs/assets",
}
# Routes that callers outside Pilothouse authenticate with a secret of their own, and that
# answer 403 without it: Telegram sends the one it was given at setWebhook
# (tests/test_telegram.py).
OWN_SECRET = {"/telegram/webhook"}


def full_app() -> FastAPI:
    """The app with every optional router mounted (Telegram's only comes with a token)."""
    return create_app(Settings(telegram_bot_token=SecretStr("1:walk"), _env_file=None))


def walk(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, also inside included routers (FastAPI keeps those nested)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            # Routers carry their full paths; none is included under a prefix.
            assert not route.include_context.prefix  # type: ignore[attr-defined]
            yield from walk(nested.routes)
        else:
            yield route


def private_routes() -> list[tuple[str, str]]:
    app = full_app()
    found = []
    for route in walk(app.routes):
        path = getattr(route, "path", "")
        if path in PUBLIC or path in OWN_SECRET:
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, re.sub(r"\{[^}]+\}", "x", path)))
    return found


def test_the_walk_covers_the_app() -> None:
    app = full_app()
    paths = {getattr(r, "path", "") for r in walk(app.routes)}
    assert paths >= PUBLIC | OWN_SECRET, (PUBLIC | OWN_SECRET) - paths
    assert ("GET", "/auth/tokens") in private_routes()


async def test_every_private_route_answers_401_without_a_token(api: Api) -> None:
    routes = private_routes()
    assert len(routes) >= 4
    async with api.client() as client:
        for method, path in routes:
            answer = await client.request(method, path, json={})
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert answer.json()["error_code"] == "NOT_AUTHENTICATED"
    async with api.client("ph_forged") as client:
        for method, path in routes:
            answer = await client.request(method, path, json={})
            assert answer.status_code == 401, (method, path)


async def test_public_routes_answer_without_a_token(api: Api) -> None:
    async with api.client() as client:
        # The assets mount is a directory; tests/test_probes.py fetches its files.
        for path in sorted(PUBLIC - {"/docs/oauth2-redirect", "/docs/assets"}):
            answer = await client.get(path)
            assert answer.status_code == 200, (path, answer.text)


async def test_admin_satisfies_every_scope(api: Api) -> None:
    weak = await make_token(api.db, "weak", Scope.artifacts_read)
    async with api.client(api.admin_token) as strong, api.client(weak) as client:
        for method, path in private_routes():
            if method == "DELETE":
                continue
            weak_answer = await client.request(method, path, json={})
            strong_answer = await strong.request(method, path, json={})
            assert strong_answer.status_code not in (401, 403), (method, path)
            if weak_answer.status_code == 403:
                assert weak_answer.json()["error_code"] == "INSUFFICIENT_SCOPE"


def test_every_route_has_a_summary_and_typed_models() -> None:
    app = full_app()
    for route in walk(app.routes):
        if isinstance(route, APIRoute) and route.include_in_schema:
            assert route.summary, route.path
            # Streams and downloads document their media type instead of a JSON model, and
            # a 204 has no body to model.
            documented = (
                route.response_model is not None
                or route.responses.get(200, {}).get("content")
                or route.status_code == 204
            )
            assert documented or route.path in PUBLIC, route.path
