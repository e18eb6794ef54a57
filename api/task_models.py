"""The task API's answers, in the coding-agent system's shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from settings import LIMITS
from store.models import Task, TaskIteration
from strict import Strict
from workflows.task_spec import Branch, TaskState


class TaskCreated(BaseModel):
    id: str
    status: TaskState
    created_at: datetime


class ChangesSummary(BaseModel):
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0


class IterationPublic(BaseModel):
    number: int
    prompt: str
    status: str
    result: str | None
    error: str | None
    agent_session_id: str | None
    usage: dict[str, Any]
    changes: ChangesSummary
    started_at: datetime | None
    ended_at: datetime | None


class TaskPublic(BaseModel):
    id: str
    status: TaskState
    repo_url: str | None
    branch: str | None
    target_branch: str | None
    prompt: str
    callback_url: str | None
    config: dict[str, Any]
    provider_key: str | None = Field(description="The registered key it uses, if any")
    has_access_token: bool = Field(description="Whether it was given a token (never shown)")
    workspace: str | None
    agent_session_id: str | None
    iteration: int = Field(description="The latest iteration's number; the first is 1")
    result: str | None
    error: str | None
    changes_summary: ChangesSummary
    usage: dict[str, Any]
    pr_url: str | None
    pr_number: int | None
    trace_id: str
    owner: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None = Field(description="When the task ended, if it has")
    updated_at: datetime
    iterations: list[IterationPublic] | None = Field(None, description="With `?include=iterations`")
    kind: str = Field("run", description="`run`, or `definition` (made with `prompt_template`)")
    definition_id: str | None = Field(None, description="An execution's definition")
    trigger: str | None = Field(None, description="An execution's: `manual` or `schedule`")
    name: str | None = None
    description: str | None = None
    definition: dict[str, Any] | None = Field(None, description="A definition's fields")
    is_scheduled: bool | None = None
    schedule_cron: str | None = None
    is_active: bool | None = Field(None, description="A definition's: not paused")
    next_run_at: datetime | None = Field(None, description="From the schedule, on a single read")
    last_run_at: datetime | None = None


def task_public(
    task: Task,
    iterations: list[TaskIteration] | None = None,
    next_run_at: datetime | None = None,
) -> TaskPublic:
    fields = task.definition or {}
    definition = task.kind == "definition"
    return TaskPublic(
        kind=task.kind,
        definition_id=task.definition_id,
        trigger=task.trigger,
        name=task.name,
        description=task.description,
        definition=fields if definition else None,
        is_scheduled=bool(fields.get("is_scheduled")) if definition else None,
        schedule_cron=fields.get("schedule_cron"),
        is_active=task.state == "active" if definition else None,
        next_run_at=next_run_at,
        last_run_at=task.last_run_at,
        id=task.id,
        status=task.state,
        repo_url=task.repo_url,
        branch=task.branch,
        target_branch=task.target_branch,
        prompt=task.prompt,
        callback_url=task.callback_url,
        config=task.config,
        provider_key=task.key_name,
        has_access_token=task.credential is not None,
        workspace=task.workspace,
        agent_session_id=task.agent_session_id,
        iteration=task.iterations,
        result=task.result,
        error=task.error,
        changes_summary=ChangesSummary(**task.changes),
        usage=task.usage,
        pr_url=task.pr_url,
        pr_number=task.pr_number,
        trace_id=task.trace_id,
        owner=task.owner,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.completed_at,
        updated_at=task.updated_at,
        iterations=None
        if iterations is None
        else [
            IterationPublic(
                number=i.number,
                prompt=i.prompt,
                status=i.state,
                result=i.result,
                error=i.error,
                agent_session_id=i.agent_session_id,
                usage=i.usage,
                changes=ChangesSummary(**i.changes),
                started_at=i.started_at,
                ended_at=i.finished_at,
            )
            for i in iterations
        ],
    )


class InstructBody(Strict):
    prompt: str = Field(min_length=1, max_length=LIMITS.max_prompt_chars)


class InstructAnswer(BaseModel):
    id: str
    status: str
    iteration: int


class CreatePrBody(Strict):
    title: str = Field(min_length=1, max_length=256)
    description: str = Field("", max_length=LIMITS.max_text_chars)
    target_branch: Branch | None = None


class PrCreated(BaseModel):
    pr_url: str
    pr_number: int
    branch: str


class PrAwaitingApproval(BaseModel):
    status: str = "awaiting_approval"
    branch: str
    gate_id: str
    detail: str


class CancelAnswer(BaseModel):
    id: str
    status: str = Field(description="`canceling` while the agent stops, or how it ended")
    message: str


class ExecutionStarted(BaseModel):
    execution_id: str
    session_id: str = Field(description="The execution's task id: its events and stream")
    status: str
    started_at: datetime


class ExecutionPublic(BaseModel):
    id: str
    status: TaskState
    trigger: str | None
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: int | None
    result: str | None
    error: str | None
    usage: dict[str, Any]


def execution_public(task: Task) -> ExecutionPublic:
    start = task.started_at or task.created_at
    duration = (
        int((task.completed_at - start).total_seconds() * 1000) if task.completed_at else None
    )
    return ExecutionPublic(
        id=task.id,
        status=task.state,
        trigger=task.trigger,
        started_at=start,
        completed_at=task.completed_at,
        duration_ms=duration,
        result=task.result,
        error=task.error,
        usage=task.usage,
    )


class PauseAnswer(BaseModel):
    id: str
    is_active: bool
