"""Agent tasks, their iterations, keys, MCP servers and webhook deliveries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("state", sa.String(30), nullable=False),
        sa.Column("stage", sa.String(200), nullable=True),
        sa.Column("repo_url", sa.String(4096), nullable=True),
        sa.Column("target_branch", sa.String(255), nullable=True),
        sa.Column("branch", sa.String(255), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("callback_url", sa.String(4096), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("credential", sa.Text(), nullable=True),
        sa.Column("key_name", sa.String(200), nullable=True),
        sa.Column("workspace", sa.String(4096), nullable=True),
        sa.Column("agent_session_id", sa.String(200), nullable=True),
        sa.Column("iterations", sa.Integer(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("pr_url", sa.String(4096), nullable=True),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_tasks_created", "tasks", ["created_at"])
    op.create_table(
        "task_iterations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(100), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("state", sa.String(30), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("agent_session_id", sa.String(200), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("task_id", "number"),
    )
    op.create_index("ix_task_iterations_task_id", "task_iterations", ["task_id"])
    op.create_table(
        "keys",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("provider", sa.String(50), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "mcp_servers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("package", sa.String(500), nullable=False),
        sa.Column("command", sa.String(500), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("resource_kind", sa.String(20), nullable=False),
        sa.Column("resource_id", sa.String(100), nullable=False),
        sa.Column("event", sa.String(100), nullable=False),
        sa.Column("url", sa.String(4096), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_deliveries_resource", "webhook_deliveries", ["resource_id", "id"])


def downgrade() -> None:
    for table in ("webhook_deliveries", "mcp_servers", "keys", "task_iterations", "tasks"):
        op.drop_table(table)
