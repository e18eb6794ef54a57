"""Work that reaches a workflow by another way than the API still reaches an end.

Each input the API refuses is fed straight to JobWorkflow: the job must end `failed`, in
its row, its event log and Temporal, never stuck with a workflow task failing forever.
A workflow that cannot take a cancel is terminated, and the end is recorded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from settings import LIMITS, Settings
from stack import DEV_SERVER_TUNING, temporal_binary
from store.engine import Database
from store.models import Event, GateRow, Job
from temporal_client import connect
from tests.conftest import Api, serve
from tests.jobs_helpers import GATE, create_job, event_types, stage, wait_state
from worker import build_worker
from workflows import attributes
from workflows.job_spec import JobInput
from workflows.jobs import JobWorkflow

pytestmark = pytest.mark.usefixtures("worker")


async def insert_job(db: Database, stages: Any, params: Any = None) -> str:
    """A job row as the API would write it, with whatever stages it is given."""
    job_id = f"job-{uuid.uuid4()}"
    async with db.session() as session:
        session.add(Job(id=job_id, stages=[], params={}, owner="bypass"))
        await session.commit()
    return job_id


async def job_row(db: Database, job_id: str) -> Job:
    async with db.session() as session:
        row = await session.get(Job, job_id)
        assert row is not None
        return row


BAD_STAGES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "stage timeout 1e16": ([{"name": "a", "run": ["true"], "timeout_seconds": 1e16}], {}),
    "stage timeout 1e300": ([{"name": "a", "run": ["true"], "timeout_seconds": 1e300}], {}),
    "gate timeout 1e20": ([stage("a", gate={"timeout_seconds": 1e20})], {}),
    "gate minutes 1e15": ([stage("a", gate={"timeout_minutes": 1e15})], {}),
    "reminders 1e20": ([stage("a", gate={"reminder_every_seconds": 1e20})], {}),
    "reminders 1e-300": ([stage("a", gate={"reminder_every_seconds": 1e-300})], {}),
    "1.5 MB of params": ([stage("a")], {"blob": "x" * 1_500_000}),
    "10,000 stages": ([stage(f"s{n}") for n in range(10_000)], {}),
    "bad input schema": ([stage("a", gate={"input_schema": {"type": "bogus"}})], {}),
    "NUL in argv": ([stage("a", "echo", "a\x00b")], {}),
    "NUL in env": ([stage("a", env={"X": "\x00"})], {}),
    "NUL in params": ([stage("a")], {"x": "\x00"}),
    "NUL in cwd": ([stage("a", cwd="/tmp\x00")], {}),
    "a typo in a gate": ([{"name": "a", "run": ["true"], "gaet": GATE}], {}),
}


@pytest.mark.parametrize("case", list(BAD_STAGES))
async def test_input_the_api_refuses_ends_the_job_failed(
    case: str, db: Database, client: Client, settings: Settings
) -> None:
    stages, params = BAD_STAGES[case]
    job_id = await insert_job(db, stages)
    handle = await client.start_workflow(
        JobWorkflow.run,
        JobInput(job_id=job_id, stages=stages, params=params),
        id=job_id,
        task_queue=settings.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 60)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidJob", cause
    row = await job_row(db, job_id)
    assert row.state == "failed" and row.error and row.error.startswith("invalid job: ")
    async with db.session() as session:
        [last] = (await session.exec(select(Event).where(Event.resource_id == job_id))).all()[-1:]
    assert last.type == "job_failed" and last.final
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED


async def test_a_workflow_that_cannot_take_a_cancel_is_terminated(
    api: Api, admin: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    job_id = await insert_job(api.db, [])
    # Input that does not even decode: every workflow task fails, and a cancel request
    # would wait behind them forever.
    handle = await client.start_workflow(
        "JobWorkflow",
        {"job_id": job_id, "stages": "not a list"},
        id=job_id,
        task_queue=settings.task_queue,
    )
    deadline = time.monotonic() + 60
    while (await handle.describe()).raw_description.pending_workflow_task.attempt < 2:
        assert time.monotonic() < deadline, "the workflow task never failed"
        await asyncio.sleep(0.1)
    answer = await admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "canceled"
    assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    job = (await admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["state"] == "canceled" and "kept failing" in job["error"]
    assert (await event_types(admin, job_id))[-1] == "job_canceled"
    again = await admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409


async def test_a_job_whose_workflow_ended_unrecorded_is_recorded_on_cancel(
    api: Api, admin: httpx.AsyncClient, client: Client
) -> None:
    job_id = await create_job(admin, stage("wait", gate=GATE))
    await wait_state(admin, job_id, "needs_approval")
    # As an operator would from the Temporal UI: nothing in Pilothouse hears of it.
    await client.get_workflow_handle(job_id).terminate(reason="from the UI")
    answer = await admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 200 and answer.json()["state"] == "canceled"
    job = (await admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["state"] == "canceled" and job["open_gate"] is None
    assert job["gates"][0]["state"] == "canceled"


async def test_ending_a_job_closes_its_open_gate_everywhere(
    api: Api, admin: httpx.AsyncClient, client: Client
) -> None:
    job_id = await create_job(admin, stage("review", gate=GATE), stage("after"))
    job = await wait_state(admin, job_id, "needs_approval")
    gate_id = job["open_gate"]["gate_id"]
    canceled = await admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceling"
    ended = await wait_state(admin, job_id, "canceled")
    assert ended["open_gate"] is None and ended["gates"][0]["state"] == "canceled"
    [listed] = (await admin.get("/api/v1/jobs")).json()["items"]
    assert listed["gates"][0]["state"] == "canceled"
    pending = (await admin.get("/api/v1/approvals", params={"state": "pending"})).json()
    assert pending["total"] == 0
    decide = await admin.post(f"/api/v1/approvals/{gate_id}/decide", json={"outcome": "approve"})
    assert decide.status_code == 409 and decide.json()["error_code"] == "GATE_ALREADY_DECIDED"
    async with api.db.session() as session:
        gate = await session.get(GateRow, gate_id)
    assert gate is not None and gate.state == "canceled" and gate.reason


async def test_a_failed_job_fails_its_workflow_and_names_a_missing_command(
    admin: httpx.AsyncClient, client: Client
) -> None:
    job_id = await create_job(admin, stage("build", "no-such-program-here", "--flag"))
    job = await wait_state(admin, job_id, "failed")
    assert "command not found: 'no-such-program-here'" in job["error"]
    handle = client.get_workflow_handle(job_id)
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 30)
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "StageFailed"
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED


# --- long pipelines: continue-as-new before the history limit --------------------------


@pytest.fixture
async def early_continue(tmp_path: Path) -> AsyncIterator[Settings]:
    """A Temporal server that suggests continue-as-new after 40 history events."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=attributes.ALL,
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=40",
            *DEV_SERVER_TUNING,
        ],
        # Five seconds (the default) is short on a busy 2-core machine.
        dev_server_startup_timeout=timedelta(seconds=30),
    )
    try:
        yield Settings(
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'pilothouse.db'}",
            temporal_address=env.client.service_client.config.target_host,
            task_queue="continue",
            _env_file=None,
        )
    finally:
        await env.shutdown()


async def test_a_long_job_continues_as_new_and_runs_each_stage_once(
    early_continue: Settings, tmp_path: Path
) -> None:
    from store import migrate
    from store.tokens import Scope
    from tests.conftest import make_token

    settings = early_continue
    migrate.upgrade(settings.db_url)
    db = Database(settings.db_url)
    counter = tmp_path / "runs"
    counter.mkdir()
    try:
        client = await connect(settings)
        token = await make_token(db, "admin", Scope.admin)
        worker: Worker = build_worker(client, db, settings)
        async with (
            worker,
            serve(settings) as base,
            httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as admin,
        ):
            # With `retries`, each stage is an activity of its own: consecutive stages
            # without would run as one series, whose history never grows to the limit.
            count = f"echo x >> {counter}/s{{n}}"
            stages = [stage(f"s{n}", "sh", "-c", count.format(n=n), retries=1) for n in range(12)]
            stages[5]["gate"] = GATE
            job_id = await create_job(admin, *stages)
            await wait_state(admin, job_id, "needs_approval")
            await admin.post(f"/api/v1/jobs/{job_id}/approve")
            await wait_state(admin, job_id, "completed", seconds=120)
            runs = [w.run_id async for w in client.list_workflows(f"WorkflowId = '{job_id}'")]
        assert len(runs) > 1, "the job never continued as new"
        assert {p.name: p.read_text() for p in counter.iterdir()} == {
            f"s{n}": "x\n" for n in range(12)
        }
    finally:
        await db.dispose()


def test_the_limits_keep_a_job_inside_temporals_payload_limit() -> None:
    # A step's input carries the params twice (as JSON and as PARAM_ variables), its argv
    # and its env; the whole job's input carries every stage once.
    step = 2 * LIMITS.max_params_bytes + LIMITS.max_spec_bytes
    assert step < 2 * 1024 * 1024
    assert LIMITS.max_spec_bytes + LIMITS.max_params_bytes < 2 * 1024 * 1024
