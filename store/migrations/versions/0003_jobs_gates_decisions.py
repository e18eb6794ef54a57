"""Jobs, gates, decisions, and the final-event flag.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("final", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("pipeline", sa.String(200), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("stage", sa.String(200), nullable=True),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_jobs_state", "jobs", ["state", "created_at"])
    op.create_table(
        "gates",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("resource_kind", sa.String(20), nullable=False),
        sa.Column("resource_id", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("approvals_needed", sa.Integer(), nullable=False),
        sa.Column("approvals", sa.JSON(), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("deadline", UTCDateTime(), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("via", sa.String(20), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_gates_state", "gates", ["state", "opened_at"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("gate_id", sa.String(200), nullable=False),
        sa.Column("resource_kind", sa.String(20), nullable=False),
        sa.Column("resource_id", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("by", sa.String(200), nullable=False),
        sa.Column("via", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("input", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_decisions_gate", "decisions", ["gate_id", "created_at"])


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_table("gates")
    op.drop_table("jobs")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("final")
