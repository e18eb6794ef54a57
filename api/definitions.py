"""Task definitions: made from a `prompt_template` request, and started as executions.

A definition is a `tasks` row of kind `definition`; it runs nothing itself. Its session
template (`template_id`) is read when the definition is made or changed: the definition
keeps the resolved options, so a later change to the template does not change what a
schedule already runs.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from api import schedules
from api.errors import ApiError
from api.starts import Caller, create_and_start
from settings import Settings
from store.credentials import CredentialRef
from store.models import Key, SessionTemplate, Task, utcnow
from store.tokens import Principal
from workflows.definition_spec import DefinitionCreate, SdkOptions, missing, render
from workflows.task_spec import TaskConfig, TaskInput
from workflows.tasks import TaskWorkflow


async def resolve(
    session: AsyncSession, fields: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The task config and tools a definition runs with: its own `sdk_options` over its
    template's, and its `allowed_tools`, else the template's."""
    options = SdkOptions.model_validate(fields.get("sdk_options") or {})
    inherited = SdkOptions()
    template_id = fields.get("template_id")
    if template_id:
        template = await session.get(SessionTemplate, template_id)
        if template is None:
            raise ApiError(
                422, "UNKNOWN_TEMPLATE", f"template_id: no session template {template_id!r}"
            )
        inherited = SdkOptions.model_validate(template.sdk_options)
    merged = inherited.model_dump(exclude_none=True) | options.model_dump(exclude_none=True)
    tools = (
        list(fields.get("allowed_tools") or []) or options.allowed_tools or inherited.allowed_tools
    )
    config = TaskConfig(
        ai_model=merged.get("model"),
        permission_mode=merged.get("permission_mode"),
        **{k: merged[k] for k in ("max_turns", "timeout_seconds") if k in merged},
    )
    return config.model_dump(mode="json", exclude_none=True), tools


async def new_definition(
    session: AsyncSession, principal: Principal, body: DefinitionCreate
) -> Task:
    if body.provider_key is not None and await session.get(Key, body.provider_key) is None:
        raise ApiError(422, "UNKNOWN_KEY", f"provider_key: no registered key {body.provider_key!r}")
    fields = body.model_dump(mode="json")
    config, tools = await resolve(session, fields)
    return Task(
        id=f"task-{uuid.uuid4()}",
        kind="definition",
        state="active",
        name=body.name,
        description=body.description,
        repo_url=body.repo_url,
        prompt=body.prompt_template,
        config=config,
        key_name=body.provider_key,
        definition=fields | {"tools": tools},
        trace_id=secrets.token_hex(16),
        owner=principal.name,
    )


def execution_input(
    definition: Task, prompt: str, settings: Settings, task_id: str, trigger: str
) -> TaskInput:
    fields = definition.definition or {}
    return TaskInput(
        task_id=task_id,
        owner=definition.owner,
        repo_url=definition.repo_url,
        credential=CredentialRef(kind="key", id=definition.key_name)
        if definition.key_name
        else None,
        prompt=prompt,
        config=definition.config,
        # A schedule's workflow gives itself an id and a trace id when it starts.
        trace_id="",
        idle_ttl_seconds=settings.task_idle_ttl_seconds,
        webhook_backoff_seconds=settings.webhook_backoff_seconds,
        webhook_timeout_seconds=settings.webhook_timeout_seconds,
        auto_approve_allowed=settings.auto_approve,
        definition_id=definition.id,
        definition_name=definition.name,
        trigger="schedule" if trigger == "schedule" else "manual",
        allowed_tools=list(fields.get("tools") or []),
        one_shot=True,
        generate_report=bool(fields.get("generate_report")),
    )


def scheduled_prompt(definition: Task) -> str:
    return render(definition.prompt, dict((definition.definition or {}).get("variables") or {}))


def schedule_of(definition: Task, settings: Settings, paused: bool = False) -> Any:
    action = execution_input(definition, scheduled_prompt(definition), settings, "", "schedule")
    return schedules.build(definition, action, settings, paused)


async def execute(
    caller: Caller,
    definition: Task,
    variables: dict[str, str],
    body: Any,
) -> Task:
    """Start a manual execution: the template rendered with the defaults and `variables`."""
    session, settings, principal = caller.session, caller.settings, caller.principal
    values = dict((definition.definition or {}).get("variables") or {}) | variables
    gaps = missing(definition.prompt, values)
    if gaps:
        raise ApiError(422, "MISSING_VARIABLE", f"variables.{gaps[0]}: missing")
    prompt = render(definition.prompt, values)
    task_id = f"task-{uuid.uuid4()}"
    started = utcnow()
    task = await create_and_start(
        caller,
        body,
        kind="task",
        new_row=lambda: Task(
            id=task_id,
            repo_url=definition.repo_url,
            prompt=prompt,
            config=definition.config,
            key_name=definition.key_name,
            trace_id=secrets.token_hex(16),
            owner=principal.name,
            definition_id=definition.id,
            trigger="manual",
        ),
        created_event={
            "status": "pending",
            "message": f"execution of {definition.id} by {principal.name}",
            "payload": {"operator": principal.name, "definition_id": definition.id},
        },
        workflow=TaskWorkflow.run,
        workflow_input=lambda task: execution_input(
            definition, prompt, settings, task.id, "manual"
        ).model_copy(update={"trace_id": task.trace_id}),
        summary=lambda task: f"Execution of {definition.name or definition.id}",
    )
    if definition.last_run_at is None or definition.last_run_at < started:
        definition.last_run_at = started
        session.add(definition)
        await session.commit()
    return task
