"""Step runs: what each attempt of a step came to, so a finished step never runs again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "step_runs",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("resource_id", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_step_runs_resource", "step_runs", ["resource_id"])


def downgrade() -> None:
    op.drop_table("step_runs")
