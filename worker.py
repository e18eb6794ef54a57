"""The Temporal worker: every workflow and activity of Pilothouse, registered once."""

from __future__ import annotations

import asyncio
import logging
import py_compile
import signal
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.worker import Worker

from activities.agents import Agents
from activities.execution_records import ExecutionRecords
from activities.github import GitHub
from activities.notify import Notify, notifying
from activities.processes import children_watched_by_pidfd
from activities.records import Records
from activities.step_series import StepSeries
from activities.steps import Steps
from activities.webhooks import Webhooks
from activities.workspaces import Workspaces
from settings import Settings
from store.engine import Database
from temporal_client import connect_within
from workflow_runner import runner_for
from workflows import attributes
from workflows.approvals import ApprovalWorkflow
from workflows.jobs import JobWorkflow
from workflows.runs import RunWorkflow
from workflows.tasks import TaskWorkflow

log = logging.getLogger("pilothouse.worker")

WORKFLOWS: Sequence[type] = (JobWorkflow, ApprovalWorkflow, RunWorkflow, TaskWorkflow)


def activities(db: Database, settings: Settings) -> list[Callable[..., Any]]:
    records = Records(db, notifying(settings))
    executions = ExecutionRecords(db, settings.artifacts_dir)
    notify = Notify(db, settings)
    steps = Steps(db, settings.artifacts_dir)
    workspaces = Workspaces(db, settings)
    github = GitHub(db, settings)
    return [
        records.transition,
        records.gate_opened,
        records.gate_reminder,
        records.decisions,
        records.decision,
        records.issue,
        executions.execution,
        executions.report,
        notify.gate_opened,
        notify.gate_reminder,
        notify.gate_closed,
        steps.run,
        StepSeries(steps).run,
        workspaces.prepare,
        workspaces.clone,
        workspaces.scratch,
        workspaces.publish,
        workspaces.delete,
        Agents(db, settings).run,
        github.open_pull_request,
        Webhooks(db, settings).deliver,
    ]


def build_worker(client: Client, db: Database, settings: Settings) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=list(WORKFLOWS),
        activities=activities(db, settings),
        workflow_runner=runner_for(client.data_converter),
        graceful_shutdown_timeout=timedelta(seconds=10),
        # A cancel reaches an activity in the answer to its heartbeat. One without a
        # heartbeat timeout (a clone, a push) would send one only every 30 s, the SDK's
        # default, and go on that long after its run was canceled.
        default_heartbeat_throttle_interval=timedelta(seconds=2),
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register Pilothouse's search attributes on a server that lacks them."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.ValueType(key.indexed_value_type)
        for key in attributes.ALL
        if key.name not in listed.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=namespace)
        )
        log.info("registered search attributes: %s", ", ".join(sorted(missing)))


def cache_workflow_bytecode() -> None:
    """Write the workflow modules' bytecode. The sandbox imports a workflow's module anew
    for every run; with no cached bytecode (PYTHONDONTWRITEBYTECODE, as on the machines
    this was measured on) it compiles the source every time: ~2.6 ms a job, ~4 ms a task.
    Python reads a cache it may not write, and recompiles a source newer than it."""
    for source in Path(attributes.__file__).parent.glob("*.py"):
        try:
            py_compile.compile(str(source), doraise=True)
        except (OSError, py_compile.PyCompileError) as exc:
            log.info("no bytecode cache for %s: %s", source.name, exc)


async def run(settings: Settings) -> None:
    client = await connect_within(settings, 30)
    await ensure_search_attributes(client, settings.temporal_namespace)
    db = Database(settings.db_url)
    cache_workflow_bytecode()
    worker = build_worker(client, db, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling task queue %r on %s", settings.task_queue, settings.temporal_target)
    with children_watched_by_pidfd(loop):
        async with worker:
            await stop.wait()
    await db.dispose()
    log.info("worker stopped")
