"""Runs: tiers, phases and the issues they report.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("state", sa.String(50), nullable=False),
        sa.Column("stage", sa.String(200), nullable=True),
        sa.Column("safety_profile", sa.String(50), nullable=False),
        sa.Column("run_scope", sa.String(50), nullable=False),
        sa.Column("token_cap", sa.BigInteger(), nullable=False),
        sa.Column("max_phases", sa.Integer(), nullable=False),
        sa.Column("max_duration_minutes", sa.Integer(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("workdir", sa.String(4096), nullable=False),
        sa.Column("repository", sa.String(4096), nullable=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_runs_created", "runs", ["created_at"])
    op.create_table(
        "run_tiers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("tier_id", sa.String(200), nullable=False),
        sa.Column("tier_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("parallel", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.UniqueConstraint("run_id", "tier_id"),
    )
    op.create_index("ix_run_tiers_run_id", "run_tiers", ["run_id"])
    op.create_table(
        "run_phases",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("phase_id", sa.String(200), nullable=False),
        sa.Column("phase_index", sa.Integer(), nullable=False),
        sa.Column("tier_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("task_category", sa.String(200), nullable=True),
        sa.Column("complexity", sa.String(50), nullable=True),
        sa.Column("builder_mode", sa.String(200), nullable=True),
        sa.Column("scope", sa.JSON(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("builder_attempts", sa.Integer(), nullable=False),
        sa.Column("auditor_attempts", sa.Integer(), nullable=False),
        sa.Column("minor_issues_count", sa.Integer(), nullable=False),
        sa.Column("major_issues_count", sa.Integer(), nullable=False),
        sa.Column("recommendation", sa.String(20), nullable=True),
        sa.Column("files_changed", sa.JSON(), nullable=False),
        sa.Column("lines_added", sa.Integer(), nullable=False),
        sa.Column("lines_removed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "phase_id"),
    )
    op.create_index("ix_run_phases_run_id", "run_phases", ["run_id"])
    op.create_table(
        "run_issues",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("tier_id", sa.String(200), nullable=False),
        sa.Column("phase_id", sa.String(200), nullable=False),
        sa.Column("phase_index", sa.Integer(), nullable=False),
        sa.Column("issue_key", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("source", sa.String(50), nullable=False),
        sa.Column("category", sa.String(200), nullable=False),
        sa.Column("task_category", sa.String(200), nullable=True),
        sa.Column("complexity", sa.String(50), nullable=True),
        sa.Column("evidence_refs", sa.JSON(), nullable=False),
        sa.Column("occurrence_count", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "phase_id", "issue_key"),
    )
    op.create_index("ix_run_issues_run_id", "run_issues", ["run_id"])
    op.create_index("ix_run_issues_issue_key", "run_issues", ["issue_key"])


def downgrade() -> None:
    for table in ("run_issues", "run_phases", "run_tiers", "runs"):
        op.drop_table(table)
