"""The tables. Every change here comes with a migration in `store/migrations/versions/`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(nullable: bool = False, **kwargs: Any) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), nullable=nullable), **kwargs)


class Token(SQLModel, table=True):
    """An API token. Only the SHA-256 of the secret is kept."""

    __tablename__ = "tokens"
    __table_args__ = (
        # A name is unique among live tokens; a revoked token's name may be reused.
        sa.Index(
            "ix_tokens_live_name",
            "name",
            unique=True,
            sqlite_where=sa.text("revoked_at IS NULL"),
            postgresql_where=sa.text("revoked_at IS NULL"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    token_hash: str = Field(max_length=64, unique=True)
    scopes: list[str] = Field(default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False))
    created_at: datetime = _when(default_factory=utcnow)
    updated_at: datetime = _when(default_factory=utcnow)
    expires_at: datetime | None = _when(nullable=True, default=None)
    last_used_at: datetime | None = _when(nullable=True, default=None)
    revoked_at: datetime | None = _when(nullable=True, default=None)


class IdempotencyKey(SQLModel, table=True):
    """Maps a client's Idempotency-Key on one kind of create to the resource it made."""

    __tablename__ = "idempotency_keys"

    scope: str = Field(primary_key=True, max_length=100)
    principal: str = Field(primary_key=True, max_length=36)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    resource_id: str = Field(max_length=100)
    created_at: datetime = _when(default_factory=utcnow)


class Event(SQLModel, table=True):
    """The append-only event log of every resource. Ids only grow."""

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_resource", "resource_id", "id"),)

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
    )
    resource_kind: str = Field(max_length=20)
    resource_id: str = Field(max_length=100)
    type: str = Field(max_length=100)
    stage: str | None = Field(default=None, max_length=200)
    status: str | None = Field(default=None, max_length=50)
    message: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    payload: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    final: bool = Field(default=False, description="The last event of its resource")
    created_at: datetime = _when(default_factory=utcnow)


class Artifact(SQLModel, table=True):
    """An index row for a file a step produced. The file lives under the data directory."""

    __tablename__ = "artifacts"
    __table_args__ = (sa.Index("ix_artifacts_resource", "resource_id", "created_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    resource_kind: str = Field(max_length=20)
    resource_id: str = Field(max_length=100)
    stage: str | None = Field(default=None, max_length=200)
    kind: str = Field(default="log", max_length=20)
    path: str = Field(description="Relative to the artifacts directory", max_length=1000)
    content_type: str = Field(default="text/plain", max_length=100)
    size_bytes: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    checksum_sha256: str = Field(max_length=64)
    created_at: datetime = _when(default_factory=utcnow)


class StepRun(SQLModel, table=True):
    """One attempt of a step, by the activity that ran it: a step that finished is never run
    again. A local activity that finished is in Temporal's history only once its workflow
    task completes; after a worker is lost, the replay finds its result here instead."""

    __tablename__ = "step_runs"
    __table_args__ = (sa.Index("ix_step_runs_resource", "resource_id"),)

    key: str = Field(primary_key=True, max_length=200, description="Workflow run and activity")
    attempt: int = Field(primary_key=True)
    resource_id: str = Field(max_length=100, description="Its rows go when the resource ends")
    outcome: str = Field(
        max_length=20,
        description="started, succeeded, failed, timed_out, idle, canceled or errored",
    )
    result: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON))
    created_at: datetime = _when(default_factory=utcnow)


class Job(SQLModel, table=True):
    """A pipeline job: its stages run in order, each followed by its gate."""

    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_state", "state", "created_at"),)

    id: str = Field(primary_key=True, max_length=100)
    pipeline: str | None = Field(default=None, max_length=200)
    state: str = Field(default="queued", max_length=20)
    stage: str | None = Field(default=None, max_length=200)
    stages: list[dict[str, Any]] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    params: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    owner: str = Field(max_length=200)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = _when(default_factory=utcnow)
    updated_at: datetime = _when(default_factory=utcnow)


class GateRow(SQLModel, table=True):
    """One opening of one gate, on any resource. The inbox lists the open ones."""

    __tablename__ = "gates"
    __table_args__ = (sa.Index("ix_gates_state", "state", "opened_at"),)

    id: str = Field(primary_key=True, max_length=200)
    resource_kind: str = Field(max_length=20)
    resource_id: str = Field(max_length=100)
    stage: str = Field(max_length=200)
    state: str = Field(default="open", max_length=20)
    config: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    approvals_needed: int = 1
    approvals: list[str] = Field(default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False))
    opened_at: datetime = _when(default_factory=utcnow)
    deadline: datetime | None = _when(nullable=True, default=None)
    decided_at: datetime | None = _when(nullable=True, default=None)
    decided_by: str | None = Field(default=None, max_length=200)
    via: str | None = Field(default=None, max_length=20)
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))


class Decision(SQLModel, table=True):
    """The audit trail: every decision applied to a gate, by whom, how and why."""

    __tablename__ = "decisions"
    __table_args__ = (sa.Index("ix_decisions_gate", "gate_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=200, description="The Update id")
    gate_id: str = Field(max_length=200)
    resource_kind: str = Field(max_length=20)
    resource_id: str = Field(max_length=100)
    stage: str = Field(max_length=200)
    outcome: str = Field(max_length=20)
    by: str = Field(max_length=200)
    via: str = Field(max_length=20)
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    input: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    created_at: datetime = _when(default_factory=utcnow)


class ApprovalRequest(SQLModel, table=True):
    """A standalone request for approval (the build system's risky-decision approvals)."""

    __tablename__ = "approval_requests"
    __table_args__ = (sa.Index("ix_approval_requests_state", "state", "created_at"),)

    id: str = Field(primary_key=True, max_length=100)
    run_id: str = Field(max_length=200)
    phase_id: str = Field(max_length=200)
    context: str = Field(default="unknown", max_length=100)
    decision_info: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    deletion_info: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    state: str = Field(default="pending", max_length=20)
    stage: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    requested_by: str = Field(max_length=200)
    timeout_at: datetime | None = _when(nullable=True, default=None)
    created_at: datetime = _when(default_factory=utcnow)
    updated_at: datetime = _when(default_factory=utcnow)


class Run(SQLModel, table=True):
    """An autonomous build run: tiers of phases, each built, audited and maybe gated."""

    __tablename__ = "runs"
    __table_args__ = (sa.Index("ix_runs_created", "created_at"),)

    id: str = Field(primary_key=True, max_length=100, description="The caller's run_id")
    state: str = Field(default="RUN_CREATED", max_length=50)
    stage: str | None = Field(default=None, max_length=200, description="The phase running")
    safety_profile: str = Field(default="normal", max_length=50)
    run_scope: str = Field(default="multi_tier", max_length=50)
    token_cap: int = Field(default=5_000_000, sa_column=sa.Column(sa.BigInteger, nullable=False))
    max_phases: int = 25
    max_duration_minutes: int = 120
    tokens_used: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    workdir: str = Field(max_length=4096)
    repository: str | None = Field(default=None, max_length=4096)
    owner: str = Field(max_length=200)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = _when(default_factory=utcnow)
    started_at: datetime | None = _when(nullable=True, default=None)
    completed_at: datetime | None = _when(nullable=True, default=None)
    updated_at: datetime = _when(default_factory=utcnow)


class RunTier(SQLModel, table=True):
    __tablename__ = "run_tiers"
    __table_args__ = (sa.UniqueConstraint("run_id", "tier_id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=100, index=True)
    tier_id: str = Field(max_length=200)
    tier_index: int
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    parallel: bool = False
    state: str = Field(default="PENDING", max_length=20)


class RunPhase(SQLModel, table=True):
    """One phase of a run, with what its builder and auditor last reported."""

    __tablename__ = "run_phases"
    __table_args__ = (sa.UniqueConstraint("run_id", "phase_id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=100, index=True)
    phase_id: str = Field(max_length=200)
    phase_index: int
    tier_id: str = Field(max_length=200)
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    state: str = Field(default="QUEUED", max_length=20)
    task_category: str | None = Field(default=None, max_length=200)
    complexity: str | None = Field(default=None, max_length=50)
    builder_mode: str | None = Field(default=None, max_length=200)
    scope: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    spec: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=sa.Column(sa.JSON, nullable=False),
        description="Pilothouse's own fields: builder, auditor, gate, max_attempts, risk",
    )
    tokens_used: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    builder_attempts: int = 0
    auditor_attempts: int = 0
    minor_issues_count: int = 0
    major_issues_count: int = 0
    recommendation: str | None = Field(default=None, max_length=20)
    files_changed: list[str] = Field(
        default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    lines_added: int = 0
    lines_removed: int = 0
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    updated_at: datetime = _when(default_factory=utcnow)


class RunIssue(SQLModel, table=True):
    """An issue a phase reported (or an auditor found), counted by its key."""

    __tablename__ = "run_issues"
    __table_args__ = (sa.UniqueConstraint("run_id", "phase_id", "issue_key"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=100, index=True)
    tier_id: str = Field(max_length=200)
    phase_id: str = Field(max_length=200)
    phase_index: int
    issue_key: str = Field(max_length=200, index=True)
    severity: str = Field(max_length=20)
    source: str = Field(max_length=50)
    category: str = Field(max_length=200)
    task_category: str | None = Field(default=None, max_length=200)
    complexity: str | None = Field(default=None, max_length=50)
    evidence_refs: list[str] = Field(
        default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    occurrence_count: int = 1
    created_at: datetime = _when(default_factory=utcnow)
    updated_at: datetime = _when(default_factory=utcnow)


class ModelOverride(SQLModel, table=True):
    """Which model a role uses, set from the dashboard: for every run, or for one run.

    `category` and `complexity` are `*` when the override covers them all. One override per
    role, category, complexity and run: setting it again replaces the model."""

    __tablename__ = "model_overrides"
    __table_args__ = (
        # Two partial indexes because NULLs never collide in a unique index: the global
        # overrides (no run) are unique among themselves, and each run's among its own.
        sa.Index(
            "ix_model_overrides_global",
            "role",
            "category",
            "complexity",
            unique=True,
            sqlite_where=sa.text("run_id IS NULL"),
            postgresql_where=sa.text("run_id IS NULL"),
        ),
        sa.Index(
            "ix_model_overrides_run",
            "run_id",
            "role",
            "category",
            "complexity",
            unique=True,
            sqlite_where=sa.text("run_id IS NOT NULL"),
            postgresql_where=sa.text("run_id IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    role: str = Field(max_length=20)
    category: str = Field(default="*", max_length=200)
    complexity: str = Field(default="*", max_length=50)
    run_id: str | None = Field(default=None, max_length=100)
    model: str = Field(max_length=200)
    set_by: str = Field(max_length=200)
    created_at: datetime = _when(default_factory=utcnow)
    updated_at: datetime = _when(default_factory=utcnow)


class TelegramMessage(SQLModel, table=True):
    """A gate's message in one Telegram chat, whose buttons decide the gate.

    `callback` is the opaque id in the buttons' `callback_data` (Telegram allows 64 bytes, a
    gate id can be longer); a gate's messages in every chat share it."""

    __tablename__ = "telegram_messages"
    __table_args__ = (
        sa.UniqueConstraint("gate_id", "chat_id"),
        sa.Index("ix_telegram_messages_callback", "callback"),
    )

    id: int | None = Field(default=None, primary_key=True)
    callback: str = Field(max_length=32)
    gate_id: str = Field(max_length=200)
    resource_kind: str = Field(max_length=20)
    resource_id: str = Field(max_length=100)
    chat_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    message_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, nullable=True), description="Once sent"
    )
    text: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    state: str = Field(
        default="sending", max_length=20, description="sending, open, closed or failed"
    )
    created_at: datetime = _when(default_factory=utcnow)
    updated_at: datetime = _when(default_factory=utcnow)


class TelegramPrompt(SQLModel, table=True):
    """A ForceReply asking for the reason of a rejection: the reply to it rejects the gate."""

    __tablename__ = "telegram_prompts"
    __table_args__ = (sa.UniqueConstraint("chat_id", "message_id"),)

    id: str = Field(primary_key=True, max_length=100, description="The Reject press's query id")
    gate_id: str = Field(max_length=200)
    chat_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    message_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, nullable=True), description="Once sent"
    )
    user_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    created_at: datetime = _when(default_factory=utcnow)


class Task(SQLModel, table=True):
    """A coding-agent task: a repository, a prompt, and the iterations an agent ran on it."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.Index("ix_tasks_created", "created_at"),
        sa.Index("ix_tasks_kind", "kind", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=100)
    state: str = Field(default="pending", max_length=30)
    stage: str | None = Field(default=None, max_length=200, description="The iteration running")
    repo_url: str | None = Field(default=None, max_length=4096)
    target_branch: str | None = Field(default=None, max_length=255)
    branch: str | None = Field(default=None, max_length=255)
    prompt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    callback_url: str | None = Field(default=None, max_length=4096)
    config: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    credential: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text, nullable=True),
        description="The request's access token, encrypted (store/secrets.py)",
    )
    key_name: str | None = Field(default=None, max_length=200)
    workspace: str | None = Field(default=None, max_length=4096)
    agent_session_id: str | None = Field(default=None, max_length=200)
    iterations: int = 0
    result: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    changes: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    usage: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    pr_url: str | None = Field(default=None, max_length=4096)
    pr_number: int | None = None
    trace_id: str = Field(max_length=64)
    owner: str = Field(max_length=200)
    # A definition (issue 12) is a task row of its own kind: it runs nothing itself; each of
    # its executions is a `run` row naming it in `definition_id`.
    kind: str = Field(default="run", max_length=20, description="`run` or `definition`")
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    definition: dict[str, Any] | None = Field(
        default=None,
        sa_column=sa.Column(sa.JSON, nullable=True),
        description="A definition's fields (workflows/definition_spec.py)",
    )
    definition_id: str | None = Field(default=None, max_length=100, index=True)
    trigger: str | None = Field(default=None, max_length=20, description="manual or schedule")
    last_run_at: datetime | None = _when(nullable=True, default=None)
    created_at: datetime = _when(default_factory=utcnow)
    started_at: datetime | None = _when(nullable=True, default=None)
    completed_at: datetime | None = _when(nullable=True, default=None)
    updated_at: datetime = _when(default_factory=utcnow)


class SessionTemplate(SQLModel, table=True):
    """Reusable agent options a task definition may name and inherit."""

    __tablename__ = "session_templates"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    category: str | None = Field(default=None, max_length=100, index=True)
    sdk_options: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    default_mode: str = Field(default="interactive", max_length=50)
    is_public: bool = False
    owner: str = Field(max_length=200)
    created_at: datetime = _when(default_factory=utcnow)


class TaskIteration(SQLModel, table=True):
    """One run of the agent on a task: the first prompt, or a follow-up instruction."""

    __tablename__ = "task_iterations"
    __table_args__ = (sa.UniqueConstraint("task_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(max_length=100, index=True)
    number: int
    prompt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    state: str = Field(default="running", max_length=30)
    result: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    agent_session_id: str | None = Field(default=None, max_length=200)
    usage: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    changes: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    started_at: datetime | None = _when(nullable=True, default=None)
    finished_at: datetime | None = _when(nullable=True, default=None)
    updated_at: datetime = _when(default_factory=utcnow)


class Key(SQLModel, table=True):
    """A registered credential (a GitHub token), encrypted at rest, named in requests."""

    __tablename__ = "keys"

    name: str = Field(primary_key=True, max_length=200)
    provider: str = Field(max_length=50)
    token: str = Field(sa_column=sa.Column(sa.Text, nullable=False), description="Encrypted")
    created_by: str = Field(max_length=200)
    created_at: datetime = _when(default_factory=utcnow)


class McpServer(SQLModel, table=True):
    """A global MCP server; the enabled ones go into the agent's `--mcp-config` file."""

    __tablename__ = "mcp_servers"

    name: str = Field(primary_key=True, max_length=200)
    package: str = Field(max_length=500)
    command: str = Field(default="npx", max_length=500)
    args: list[str] = Field(default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False))
    enabled: bool = True
    created_by: str = Field(max_length=200)
    created_at: datetime = _when(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """One attempt to deliver one webhook: what was sent where, and what came back."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.Index("ix_webhook_deliveries_resource", "resource_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    resource_kind: str = Field(max_length=20)
    resource_id: str = Field(max_length=100)
    event: str = Field(max_length=100, description="`task.completed`, `task.failed`, …")
    url: str = Field(max_length=4096)
    attempt: int
    status_code: int | None = None
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    duration_ms: int = 0
    delivered: bool = False
    created_at: datetime = _when(default_factory=utcnow)
