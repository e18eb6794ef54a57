"""List pages: `?skip=&limit=` in, `{items, total, skip, limit, links}` out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field

from settings import LIMITS

T = TypeVar("T")

MAX_LIMIT = 100


class Links(BaseModel):
    next: str | None = Field(None, description="URL of the next page, if any")
    prev: str | None = Field(None, description="URL of the previous page, if any")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="How many items match, across all pages")
    skip: int
    limit: int
    links: Links


class PageParams(BaseModel):
    skip: int
    limit: int


async def _page_params(
    skip: Annotated[
        int, Query(ge=0, le=LIMITS.max_int, description="How many items to pass over")
    ] = 0,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, at most {MAX_LIMIT}")
    ] = 50,
) -> PageParams:
    return PageParams(skip=skip, limit=limit)


PageQuery = Annotated[PageParams, Depends(_page_params)]


def page(request: Request, items: Sequence[T], total: int, params: PageParams) -> Page[T]:
    def link(skip: int) -> str:
        return str(request.url.include_query_params(skip=skip, limit=params.limit))

    after = params.skip + params.limit
    return Page[T](
        items=list(items),
        total=total,
        skip=params.skip,
        limit=params.limit,
        links=Links(
            next=link(after) if after < total else None,
            prev=link(max(params.skip - params.limit, 0)) if params.skip > 0 else None,
        ),
    )
