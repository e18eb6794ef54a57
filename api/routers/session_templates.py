"""Session templates (`/api/v1/session-templates`): agent options a task definition names
with `template_id` and inherits (`sdk_options`, and its tools)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Query, Request, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.auth import require
from api.deps import SessionDep
from api.errors import ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from settings import LIMITS
from store.models import SessionTemplate
from store.tokens import Principal, Scope
from strict import Name, Strict, Text
from workflows.definition_spec import SdkOptions

router = strict_router(
    prefix="/api/v1/session-templates",
    tags=["session-templates"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
Reader = Annotated[Principal, require(Scope.tasks_read)]
Writer = Annotated[Principal, require(Scope.tasks_write)]
Category = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]


class TemplateCreate(Strict):
    name: Name
    description: Text = ""
    category: Category | None = None
    sdk_options: SdkOptions = Field(default_factory=SdkOptions)
    default_mode: Literal["interactive", "background", "forked"] = "interactive"
    is_public: bool = False


class TemplateCreated(BaseModel):
    id: str
    name: str
    category: str | None
    created_at: datetime


class TemplateSummary(BaseModel):
    id: str
    name: str
    category: str | None
    is_public: bool


class TemplatePublic(TemplateSummary):
    description: str | None
    sdk_options: dict[str, Any]
    default_mode: str
    owner: str
    created_at: datetime


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a session template",
    responses={422: {"model": ErrorBody}},
)
async def create_template(
    body: TemplateCreate, principal: Writer, session: SessionDep
) -> TemplateCreated:
    row = SessionTemplate(
        name=body.name,
        description=body.description,
        category=body.category,
        sdk_options=body.sdk_options.model_dump(mode="json", exclude_none=True),
        default_mode=body.default_mode,
        is_public=body.is_public,
        owner=principal.name,
    )
    session.add(row)
    await session.commit()
    return TemplateCreated(
        id=row.id, name=row.name, category=row.category, created_at=row.created_at
    )


@router.get("", summary="List session templates")
async def list_templates(
    request: Request,
    _: Reader,
    session: SessionDep,
    params: PageQuery,
    category: Annotated[Category | None, Query(description="Only this category")] = None,
    is_public: Annotated[bool | None, Query(description="Only public, or only private")] = None,
) -> Page[TemplateSummary]:
    query = select(SessionTemplate)
    if category is not None:
        query = query.where(SessionTemplate.category == category)
    if is_public is not None:
        query = query.where(SessionTemplate.is_public == is_public)
    total = (await session.exec(select(sa.func.count()).select_from(query.subquery()))).one()
    rows = await session.exec(
        query.order_by(col(SessionTemplate.created_at).desc())
        .offset(params.skip)
        .limit(params.limit)
    )
    items = [
        TemplateSummary(id=t.id, name=t.name, category=t.category, is_public=t.is_public)
        for t in rows
    ]
    return page(request, items, int(total), params)


@router.get(
    "/{template_id}",
    summary="Get a session template",
    responses={404: {"model": ErrorBody, "description": "No such template"}},
)
async def get_template(template_id: str, _: Reader, session: SessionDep) -> TemplatePublic:
    row = (
        await session.get(SessionTemplate, template_id)
        if len(template_id) <= LIMITS.max_name_chars
        else None
    )
    if row is None:
        raise not_found("session template", template_id)
    return TemplatePublic(
        id=row.id,
        name=row.name,
        category=row.category,
        is_public=row.is_public,
        description=row.description,
        sdk_options=row.sdk_options,
        default_mode=row.default_mode,
        owner=row.owner,
        created_at=row.created_at,
    )
