"""Standalone approval requests.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("phase_id", sa.String(200), nullable=False),
        sa.Column("context", sa.String(100), nullable=False),
        sa.Column("decision_info", sa.JSON(), nullable=False),
        sa.Column("deletion_info", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("stage", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("timeout_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_approval_requests_state", "approval_requests", ["state", "created_at"])


def downgrade() -> None:
    op.drop_table("approval_requests")
