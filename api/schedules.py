"""A task definition's Temporal Schedule: made, changed, paused and removed with it.

The schedule's id names the definition (`task-schedule-<definition id>`), so an operator
finds it in the Temporal UI and with `temporal schedule`. Its action is fixed when the
schedule is made or changed: the template rendered with the definition's default
`variables` (a scheduled definition must have a default for each; see
`workflows/definition_spec.check_definition`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError
from settings import Settings
from store.models import Task
from workflows import attributes
from workflows.task_spec import TaskInput
from workflows.tasks import TaskWorkflow

OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate_other": ScheduleOverlapPolicy.TERMINATE_OTHER,
}


class ScheduleView(BaseModel):
    is_active: bool
    next_run_at: datetime | None
    last_run_at: datetime | None


def schedule_id(definition_id: str) -> str:
    return f"task-schedule-{definition_id}"


def action_id(definition_id: str) -> str:
    """Temporal appends the fire time: `<definition id>-exec-2026-11-24T09:00:00Z`."""
    return f"{definition_id}-exec"


def scheduled(row: Task) -> bool:
    fields = row.definition or {}
    return bool(fields.get("is_scheduled") and fields.get("schedule_cron"))


def build(row: Task, action_input: TaskInput, settings: Settings, paused: bool) -> Schedule:
    fields = row.definition or {}
    return Schedule(
        action=ScheduleActionStartWorkflow(
            TaskWorkflow.run,
            action_input,
            id=action_id(row.id),
            task_queue=settings.task_queue,
            typed_search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(attributes.KIND, "task"),
                    SearchAttributePair(attributes.STATE, "pending"),
                ]
            ),
            static_summary=f"Execution of {row.name or row.id}",
        ),
        spec=ScheduleSpec(
            cron_expressions=[str(fields["schedule_cron"])],
            time_zone_name=str(fields.get("timezone") or "UTC"),
        ),
        policy=SchedulePolicy(
            overlap=OVERLAP[str(fields.get("overlap_policy") or "skip")],
            # Bounded: a server back after a long stop fires at most what fell in this window.
            catchup_window=timedelta(seconds=settings.schedule_catchup_seconds),
        ),
        state=ScheduleState(paused=paused, note=f"task definition {row.id}"),
    )


async def create(temporal: Client, schedule: Schedule, definition_id: str) -> None:
    try:
        await temporal.create_schedule(schedule_id(definition_id), schedule)
    except ScheduleAlreadyRunningError:
        # A retried create: the schedule is there; make it what this request says.
        await replace(temporal, schedule, definition_id)
    except RPCError as exc:
        raise refused(exc) from None


async def replace(temporal: Client, schedule: Schedule, definition_id: str) -> None:
    """The definition's schedule made to match it, keeping whether it is paused."""

    def updated(current: ScheduleUpdateInput) -> ScheduleUpdate:
        schedule.state.paused = current.description.schedule.state.paused
        return ScheduleUpdate(schedule=schedule)

    try:
        await temporal.get_schedule_handle(schedule_id(definition_id)).update(updated)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            await create(temporal, schedule, definition_id)
            return
        raise refused(exc) from None


async def delete(temporal: Client, definition_id: str) -> None:
    try:
        await temporal.get_schedule_handle(schedule_id(definition_id)).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise refused(exc) from None


async def set_paused(temporal: Client, definition_id: str, paused: bool, by: str) -> None:
    handle = temporal.get_schedule_handle(schedule_id(definition_id))
    try:
        if paused:
            await handle.pause(note=f"paused by {by}")
        else:
            await handle.unpause(note=f"unpaused by {by}")
    except RPCError as exc:
        raise refused(exc) from None


async def view(temporal: Client, definition_id: str) -> ScheduleView | None:
    """What the schedule says now; None when it is gone or Temporal does not answer: a
    read then shows what the database has rather than failing."""
    try:
        described = await temporal.get_schedule_handle(schedule_id(definition_id)).describe()
    except RPCError:
        return None
    info = described.info
    recent = [a.started_at for a in info.recent_actions]
    return ScheduleView(
        is_active=not described.schedule.state.paused,
        next_run_at=info.next_action_times[0] if info.next_action_times else None,
        last_run_at=max(recent) if recent else None,
    )


def refused(exc: RPCError) -> ApiError:
    """Temporal checks a cron's values more closely than the API does: its refusal of one
    is the caller's error, naming the field."""
    if exc.status == RPCStatusCode.INVALID_ARGUMENT:
        return ApiError(422, "INVALID_SCHEDULE", f"schedule_cron: {exc.message}")
    return ApiError(503, "TEMPORAL_UNAVAILABLE", f"the schedule: {exc}")
