"""Task definitions, their executions and schedules; session templates.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as table:
        table.add_column(
            sa.Column("kind", sa.String(20), nullable=False, server_default=sa.text("'run'"))
        )
        table.add_column(sa.Column("name", sa.String(200), nullable=True))
        table.add_column(sa.Column("description", sa.Text(), nullable=True))
        table.add_column(sa.Column("definition", sa.JSON(), nullable=True))
        table.add_column(sa.Column("definition_id", sa.String(100), nullable=True))
        table.add_column(sa.Column("trigger", sa.String(20), nullable=True))
        table.add_column(sa.Column("last_run_at", UTCDateTime(), nullable=True))
    op.create_index("ix_tasks_definition_id", "tasks", ["definition_id"])
    op.create_index("ix_tasks_kind", "tasks", ["kind", "created_at"])
    op.create_table(
        "session_templates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("sdk_options", sa.JSON(), nullable=False),
        sa.Column("default_mode", sa.String(50), nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_session_templates_category", "session_templates", ["category"])


def downgrade() -> None:
    op.drop_table("session_templates")
    op.drop_index("ix_tasks_kind", "tasks")
    op.drop_index("ix_tasks_definition_id", "tasks")
    with op.batch_alter_table("tasks") as table:
        for name in ("last_run_at", "trigger", "definition_id", "definition", "description"):
            table.drop_column(name)
        table.drop_column("name")
        table.drop_column("kind")
