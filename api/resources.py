"""The routes every family's resource has, mounted per kind: its events (polled and
streamed) and its artifacts (listed and downloaded). Jobs mount them under
`/api/v1/jobs/{job_id}`; runs, tasks and sessions mount the same under their own paths."""

# No `from __future__ import annotations`: the routes' parameter types are built per kind,
# inside `resource_routes`, and FastAPI must see them as objects, not names.
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import SQLModel, col, select

from api.auth import require
from api.deps import DatabaseDep, SessionDep, SettingsDep
from api.errors import ApiError, ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from api.streams import EventHub, event_json, resume_from, sse
from settings import LIMITS
from store import events
from store.models import Artifact, Event
from store.tokens import Principal, Scope


class EventOut(BaseModel):
    id: int
    ts: str
    type: str
    stage: str | None
    status: str | None
    message: str
    payload: dict[str, Any]
    resource_kind: str
    resource_id: str


class EventsPage(BaseModel):
    items: list[EventOut]
    total: int
    after: int
    limit: int
    last_id: int = Field(description="Pass as `after` to read on")
    has_more: bool


class ArtifactPublic(BaseModel):
    id: str
    stage: str | None
    kind: str
    path: str
    content_type: str
    size_bytes: int
    checksum_sha256: str
    created_at: datetime


def resource_routes(
    *,
    kind: str,
    prefix: str,
    table: type[SQLModel],
    read_scope: Scope,
    terminal: Collection[str],
    tags: list[str],
    stream_path: str = "/events/stream",
    shape: Callable[[Event], dict[str, Any]] = event_json,
    settles: Callable[[Event], bool] = lambda _: False,
) -> APIRouter:
    """Events and artifacts of one kind of resource, at `{prefix}/{<kind>_id}/…`."""
    router = strict_router(
        prefix=prefix,
        tags=list(tags),
        responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
    )
    param = f"{kind}_id"
    ResourceId = Annotated[str, Path(alias=param, max_length=LIMITS.max_name_chars)]
    Reader = Annotated[Principal, require(read_scope)]

    async def state_of(session: SessionDep, resource_id: str) -> str:
        row = await session.get(table, resource_id)
        if row is None:
            raise not_found(kind, resource_id)
        return str(row.state)  # type: ignore[attr-defined]

    def route(path: str) -> str:
        return f"/{{{param}}}{path}"

    @router.get(route("/events"), summary=f"Poll a {kind}'s events")
    async def list_events(
        resource_id: ResourceId,
        _: Reader,
        session: SessionDep,
        after: Annotated[
            int, Query(ge=0, le=LIMITS.max_int, description="Only events with a larger id")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> EventsPage:
        await state_of(session, resource_id)
        rows = list(await events.after(session, resource_id, after, limit + 1))
        items = [EventOut(**event_json(e)) for e in rows[:limit]]
        return EventsPage(
            items=items,
            total=await events.count(session, resource_id),
            after=after,
            limit=limit,
            last_id=items[-1].id if items else after,
            has_more=len(rows) > limit,
        )

    @router.get(
        route(stream_path),
        summary=f"Stream a {kind}'s events (SSE)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_events(
        request: Request,
        resource_id: ResourceId,
        _: Reader,
        db: DatabaseDep,
        settings: SettingsDep,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                max_length=40,
                description="The last id seen; one that is not an event id starts afresh",
            ),
        ] = None,
        after: Annotated[
            int, Query(ge=0, le=LIMITS.max_int, description="Replay events after this id")
        ] = 0,
    ) -> StreamingResponse:
        """`connected`, then every event with its `id:`, live, then `done` when it ends.

        Resume with `Last-Event-ID`: no gap and no duplicate. A comment every 15 s keeps the
        connection open."""
        # A short session of its own: a stream may last minutes and must not hold a
        # pooled connection all that time.
        async with db.session() as session:
            state = await state_of(session, resource_id)
        hub: EventHub = request.app.state.hub

        async def ended() -> dict[str, Any] | None:
            async with db.session() as s:
                now = await state_of(s, resource_id)
            return {"status": now} if now in terminal else None

        stream = sse(
            hub,
            resource_id,
            resume_from(last_event_id, after),
            {param: resource_id, "status": state},
            ended,
            settings.sse_keepalive_seconds,
            settings.sse_max_seconds,
            shape,
            settles,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get(
        route("/artifacts"),
        summary=f"List a {kind}'s artifacts",
        description=f"Oldest first. Download one at `{prefix}{route('/artifacts/{artifact_id}')}`.",
    )
    async def list_artifacts(
        request: Request,
        resource_id: ResourceId,
        _: Reader,
        session: SessionDep,
        params: PageQuery,
    ) -> Page[ArtifactPublic]:
        await state_of(session, resource_id)
        query = select(Artifact).where(Artifact.resource_id == resource_id)
        total = (await session.exec(select(sa.func.count()).select_from(query.subquery()))).one()
        rows = await session.exec(
            query.order_by(col(Artifact.created_at)).offset(params.skip).limit(params.limit)
        )
        items = [ArtifactPublic.model_validate(a, from_attributes=True) for a in rows]
        return page(request, items, int(total), params)

    @router.get(
        route("/artifacts/{artifact_id}"),
        summary="Download one artifact",
        response_class=FileResponse,
        responses={
            200: {
                "description": "The file, as the content type its artifact row names: step "
                "logs are `text/plain; charset=utf-8`",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def download_artifact(
        resource_id: ResourceId,
        artifact_id: Annotated[str, Path(max_length=36)],
        _: Reader,
        session: SessionDep,
        settings: SettingsDep,
    ) -> FileResponse:
        artifact = await session.get(Artifact, artifact_id)
        if artifact is None or artifact.resource_id != resource_id:
            raise not_found("artifact", artifact_id)
        root = settings.artifacts_dir
        path = (root / artifact.path).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ApiError(
                404, "ARTIFACT_FILE_MISSING", f"artifact {artifact_id}'s file is missing"
            )
        return FileResponse(path, media_type=artifact.content_type, filename=path.name)

    return router
