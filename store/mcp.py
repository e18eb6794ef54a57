"""The agent's MCP configuration: the enabled global MCP servers, as `--mcp-config` reads it."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import McpServer


def launch_args(server: McpServer) -> list[str]:
    """How the command starts the package: `npx -y <package> <args>` answers npx's prompt
    to install; another runner (`uvx`, `node`) gets the package and the args alone."""
    prefix = ["-y"] if PurePath(server.command).name == "npx" else []
    return [*prefix, server.package, *server.args]


async def mcp_config(session: AsyncSession) -> dict[str, Any] | None:
    """`{"mcpServers": {name: {"command", "args"}}}` of the enabled servers; None when no
    server is enabled, so the agent is started without `--mcp-config`."""
    rows = await session.exec(
        select(McpServer).where(col(McpServer.enabled).is_(True)).order_by(col(McpServer.name))
    )
    servers = {s.name: {"command": s.command, "args": launch_args(s)} for s in rows}
    return {"mcpServers": servers} if servers else None
