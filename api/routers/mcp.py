"""`/api/v1/mcp/servers`: global MCP servers; the enabled ones go into every agent's
`--mcp-config` file (`store/mcp.py` writes that configuration)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import Path, Request, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api.auth import require
from api.deps import IdempotencyKeyDep, SessionDep
from api.errors import ErrorBody
from api.named_rows import create_named, delete_named
from api.paging import Page, PageQuery, page
from api.route import strict_router
from settings import LIMITS
from store.models import McpServer
from store.tokens import Principal, Scope
from strict import Strict, Text

router = strict_router(
    prefix="/api/v1/mcp/servers",
    tags=["mcp"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)

# A server's command runs inside every agent, and its args often hold keys: only an
# admin adds, removes or reads one.
Reader = Annotated[Principal, require(Scope.admin)]
Writer = Reader

NAME = r"^[A-Za-z0-9._-]{1,100}$"
# One printable ASCII word that does not start with `-`: never read as an option.
WORD = r"^[!-,.-~][!-~]{0,499}$"
ServerName = Annotated[str, Path(max_length=200, description="The server's name")]


class McpServerCreate(Strict):
    name: str = Field(pattern=NAME, description="Unique; the key in `mcpServers`")
    package: str = Field(
        pattern=WORD,
        description="An npm package spec, such as `@scope/name@1.2.3`",
        examples=["@anthropic-ai/context7"],
    )
    args: list[Text] = Field(
        default_factory=list,
        max_length=LIMITS.max_argv_items,
        description="Given to the server after the package",
        examples=[["--transport", "stdio"]],
    )
    command: str = Field(
        "npx", pattern=WORD, description="What starts the package; `npx` gets `-y` too"
    )
    enabled: bool = Field(True, description="Only enabled servers reach the agent")


class McpServerPublic(BaseModel):
    name: str
    package: str
    command: str
    args: list[str]
    enabled: bool
    created_by: str = Field(description="The name of the API token that registered it")
    created_at: datetime


def _public(server: McpServer) -> McpServerPublic:
    return McpServerPublic.model_validate(server, from_attributes=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register an MCP server",
    responses={409: {"model": ErrorBody, "description": "An MCP server has this name"}},
)
async def create_server(
    body: McpServerCreate, principal: Writer, session: SessionDep, key: IdempotencyKeyDep
) -> McpServerPublic:
    """Every task's agent started from now on gets it, while it is enabled."""
    row = await create_named(
        session,
        principal,
        key,
        body,
        table=McpServer,
        name=body.name,
        kind="mcp_server",
        new_row=lambda: McpServer(**body.model_dump(), created_by=principal.name),
    )
    return _public(row)


@router.get("", summary="List MCP servers")
async def list_servers(
    request: Request, _: Reader, session: SessionDep, params: PageQuery
) -> Page[McpServerPublic]:
    """By name, enabled or not."""
    total = (await session.exec(select(sa.func.count()).select_from(McpServer))).one()
    rows = await session.exec(
        select(McpServer).order_by(col(McpServer.name)).offset(params.skip).limit(params.limit)
    )
    return page(request, [_public(s) for s in rows], int(total), params)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an MCP server",
    responses={404: {"model": ErrorBody, "description": "No MCP server has this name"}},
)
async def delete_server(name: ServerName, _: Writer, session: SessionDep) -> None:
    """Agents started from now on no longer get it."""
    await delete_named(session, McpServer, "mcp_server", name)
