"""Determinism: recorded job, run and task histories replay against today's workflow code."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.jobs_helpers import GATE, create_job, stage, wait_state
from workflow_runner import runner_for
from workflows.approvals import ApprovalWorkflow
from workflows.jobs import JobWorkflow
from workflows.runs import RunWorkflow
from workflows.tasks import TaskWorkflow

HISTORIES = Path(__file__).parent / "histories"
REPLAYER = Replayer(
    workflows=[JobWorkflow, ApprovalWorkflow, RunWorkflow, TaskWorkflow],
    data_converter=pydantic_data_converter,
    # As the worker runs them (worker.build_worker).
    workflow_runner=runner_for(pydantic_data_converter),
)


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.pb")), ids=lambda p: p.stem)
async def test_recorded_histories_replay(path: Path) -> None:
    events = list(History.FromString(path.read_bytes()).events)
    # Replay needs the recorded workflow id: the workflow derives gate ids from it.
    workflow_id = events[0].workflow_execution_started_event_attributes.workflow_id
    await REPLAYER.replay_workflow(WorkflowHistory(workflow_id, events))


def test_there_are_recorded_histories() -> None:
    assert len(list(HISTORIES.glob("*.pb"))) >= 1


@pytest.mark.usefixtures("worker")
async def test_a_fresh_history_replays(admin: httpx.AsyncClient, client: Client) -> None:
    job_id = await create_job(admin, stage("a", gate=GATE), stage("b"))
    await wait_state(admin, job_id, "needs_approval")
    await admin.post(f"/api/v1/jobs/{job_id}/reject", json={"reason": "again"})
    await wait_state(admin, job_id, "paused")
    await admin.post(f"/api/v1/jobs/{job_id}/resume", json={"params": {"x": 1}})
    await wait_state(admin, job_id, "needs_approval")
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    await wait_state(admin, job_id, "completed")
    history = await client.get_workflow_handle(job_id).fetch_history()
    await REPLAYER.replay_workflow(history)
    if os.environ.get("PILOTHOUSE_RECORD_HISTORIES"):
        # Refreshes the fixture that guards later changes to the workflow's shape.
        recorded = History(events=history.events).SerializeToString()
        (HISTORIES / "job_reject_resume_approve.pb").write_bytes(recorded)
