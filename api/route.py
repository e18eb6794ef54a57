"""How every route reads its request: a bounded body, JSON only, parsed strictly.

Every router is made by `strict_router`, so each route refuses, before its handler runs:
a body over `max_body_bytes` (413, unread), a body that is not `application/json` (415) or
not JSON (400), JSON's `NaN` and `Infinity` (422), NUL bytes in the body or the URL (422),
and a query parameter it does not declare (422, naming the nearest one). Its OpenAPI
operation documents those answers with the shared error body.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.errors import ApiError, ErrorBody
from api.session import request_session
from strict import unknown_field

# nginx's default header buffer: a longer URL is a mistake or a probe, never a real filter.
MAX_URL_BYTES = 8192

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not JSON"},
    413: {"model": ErrorBody, "description": "The body is larger than the API accepts"},
    414: {"model": ErrorBody, "description": "The URL is longer than the API accepts"},
    415: {"model": ErrorBody, "description": "The body is not `application/json`"},
    422: {"model": ErrorBody, "description": "A field is missing, unknown or out of bounds"},
}


def strict_router(**kwargs: Any) -> APIRouter:
    responses = {**ERRORS, **kwargs.pop("responses", {})}
    return APIRouter(route_class=StrictRoute, responses=responses, **kwargs)


class StrictRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        takes_body = self.body_field is not None
        queries = sorted(_query_names(self.dependant))
        with_session = _uses(self.dependant, request_session)

        async def strict(request: Request) -> Response:
            _check_url(request, queries)
            body = await _read(request, request.app.state.settings.max_body_bytes)
            if body and takes_body:
                _check_media_type(request)
                # FastAPI reads `_json` when it is set: the strict parse is the only one.
                request._json = parse(body)
            if not with_session:
                return await handle(request)
            # The request's session opens and closes here rather than as a dependency
            # with `yield`, which FastAPI runs in an exit stack of shielded context
            # managers: 2.8% of a create's instructions. It closes once the handler has
            # answered: a streamed body (SSE) reads with sessions of its own.
            async with request.app.state.db.session() as session:
                request.state.session = session
                return await handle(request)

        return strict


def _uses(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(sub.call is call or _uses(sub, call) for sub in dependant.dependencies)


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _check_url(request: Request, queries: list[str]) -> None:
    scope = request.scope
    size = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
    if size > MAX_URL_BYTES:
        raise ApiError(414, "URI_TOO_LONG", f"url: longer than {MAX_URL_BYTES} bytes")
    if "\x00" in request.scope["path"] or b"%00" in request.scope["query_string"]:
        raise ApiError(422, "VALIDATION_ERROR", "url: NUL bytes are not allowed")
    for name in request.query_params:
        if name not in queries:
            # A misspelt filter must not quietly list everything.
            raise ApiError(422, "VALIDATION_ERROR", f"query.{name}: {unknown_field(name, queries)}")


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body
    return body


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"body: larger than {limit} bytes")


def _check_media_type(request: Request) -> None:
    given = request.headers.get("content-type")
    if given:
        message = email.message.Message()
        message["content-type"] = given
        subtype = message.get_content_subtype()
        if message.get_content_maintype() == "application" and (
            subtype == "json" or subtype.endswith("+json")
        ):
            return
    raise ApiError(
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        f"body: send JSON with 'Content-Type: application/json' (got {given or 'none'})",
    )


def _no_constants(name: str) -> Any:
    raise ApiError(422, "VALIDATION_ERROR", f"body: {name} is not a JSON number")


def parse(body: bytes) -> Any:
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "INVALID_JSON", f"body: not valid JSON: {exc}") from None
    if b"\\u0000" in body:
        _find_nul(value, "body")
    return value


def _find_nul(value: Any, where: str) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise ApiError(422, "VALIDATION_ERROR", f"{where}: NUL bytes are not allowed")
    if isinstance(value, dict):
        for key, item in value.items():
            _find_nul(key, where)
            _find_nul(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _find_nul(item, f"{where}.{index}")
