"""Jobs end to end: a real worker, a real Temporal server, the API over HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from settings import Settings
from store.models import Decision, Event, IdempotencyKey, StepRun
from store.tokens import Scope
from tests.conftest import Api, free_port, make_token, serve
from tests.jobs_helpers import GATE, create_job, event_types, stage, wait_state
from workflows.gate import WORKER_LOSSES

pytestmark = pytest.mark.usefixtures("worker")


async def decisions_of(api: Api, gate_id: str) -> list[Decision]:
    async with api.db.session() as session:
        rows = await session.exec(select(Decision).where(Decision.gate_id == gate_id))
        return list(rows)


async def test_stages_run_in_order_and_stop_at_the_gate(api: Api, admin: httpx.AsyncClient) -> None:
    job_id = await create_job(
        admin, stage("a", "echo", "A"), stage("b", "echo", "B", gate=GATE), stage("c")
    )
    job = await wait_state(admin, job_id, "needs_approval")
    assert job["stage"] == "b" and job["open_gate"]["stage"] == "b"
    gate_id = job["open_gate"]["gate_id"]
    approved = await admin.post(f"/api/v1/jobs/{job_id}/approve", json={"reason": "fine"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["gate_state"] == "approved"
    # The workflow hands the decision to its next activity; the answer waits for the row.
    assert len(await decisions_of(api, gate_id)) == 1
    done = await wait_state(admin, job_id, "completed")
    assert done["gates"][0]["decided_by"] == "admin" and done["gates"][0]["via"] == "api"
    types = await event_types(admin, job_id)
    assert types == [
        "job_created",
        "stage_started",
        "step_finished",
        "stage_started",
        "step_finished",
        "gate_pause",
        "gate_approved",
        "stage_started",
        "step_finished",
        "job_completed",
    ]
    [decision] = await decisions_of(api, gate_id)
    assert (decision.by, decision.via, decision.outcome, decision.reason) == (
        "admin",
        "api",
        "approve",
        "fine",
    )


async def test_reject_pauses_and_resume_reruns_with_patched_params(
    admin: httpx.AsyncClient,
) -> None:
    job_id = await create_job(
        admin,
        stage("script", "sh", "-c", "echo length=$PARAM_LENGTH", gate=GATE),
        params={"length": 5},
    )
    await wait_state(admin, job_id, "needs_approval")
    rejected = await admin.post(
        f"/api/v1/jobs/{job_id}/reject", json={"notes": "too long", "stage": "script"}
    )
    assert rejected.status_code == 200, rejected.text
    paused = await wait_state(admin, job_id, "paused")
    assert paused["gates"][0]["reason"] == "too long"
    resumed = await admin.post(
        f"/api/v1/jobs/{job_id}/resume",
        json={"patch": [{"op": "replace", "path": "/length", "value": 3}]},
    )
    assert resumed.status_code == 200, resumed.text
    again = await wait_state(admin, job_id, "needs_approval")
    assert again["params"] == {"length": 3}
    assert len(again["gates"]) == 2 and again["open_gate"]["gate_id"].endswith(":script:2")
    events = (await admin.get(f"/api/v1/jobs/{job_id}/events")).json()["items"]
    tails = [e["payload"]["tail"] for e in events if e["type"] == "step_finished"]
    assert tails == [["length=5"], ["length=3"]]
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    await wait_state(admin, job_id, "completed")


async def test_a_bare_resume_applies_the_rejections_patch(admin: httpx.AsyncClient) -> None:
    job_id = await create_job(
        admin, stage("script", "sh", "-c", "echo $PARAM_TONE", gate=GATE), params={"tone": "dry"}
    )
    await wait_state(admin, job_id, "needs_approval")
    patch = {"op": "replace", "path": "/tone", "value": "warm"}
    await admin.post(f"/api/v1/jobs/{job_id}/reject", json={"reason": "too dry", "patch": patch})
    await wait_state(admin, job_id, "paused")
    assert (await admin.post(f"/api/v1/jobs/{job_id}/resume")).status_code == 200
    again = await wait_state(admin, job_id, "needs_approval")
    assert again["params"] == {"tone": "warm"}
    bad = await admin.post(f"/api/v1/jobs/{job_id}/reject", json={"reason": "x"})
    assert bad.status_code == 200
    await wait_state(admin, job_id, "paused")
    broken = await admin.post(
        f"/api/v1/jobs/{job_id}/resume", json={"patch": [{"op": "remove", "path": "/nope"}]}
    )
    assert broken.status_code == 422 and broken.json()["error_code"] == "INVALID_PATCH"


async def test_decision_refusals_have_their_own_codes(api: Api, admin: httpx.AsyncClient) -> None:
    job_id = await create_job(admin, stage("s", gate=GATE))
    await wait_state(admin, job_id, "needs_approval")
    no_reason = await admin.post(f"/api/v1/jobs/{job_id}/reject")
    assert no_reason.status_code == 422 and no_reason.json()["error_code"] == "REASON_REQUIRED"
    wrong_stage = await admin.post(f"/api/v1/jobs/{job_id}/approve", json={"stage": "nope"})
    assert wrong_stage.status_code == 409 and wrong_stage.json()["error_code"] == "GATE_NOT_OPEN"
    ok = await admin.post(f"/api/v1/jobs/{job_id}/approve")
    assert ok.status_code == 200
    await wait_state(admin, job_id, "completed")
    again = await admin.post(f"/api/v1/jobs/{job_id}/approve")
    assert again.status_code == 409 and again.json()["error_code"] == "GATE_ALREADY_DECIDED"
    resume = await admin.post(f"/api/v1/jobs/{job_id}/resume")
    assert resume.status_code == 409 and resume.json()["error_code"] == "JOB_NOT_PAUSED"
    cancel = await admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert cancel.status_code == 409 and cancel.json()["error_code"] == "JOB_ALREADY_ENDED"
    missing = await admin.get("/api/v1/jobs/job-nope")
    assert missing.status_code == 404 and missing.json()["error_code"] == "JOB_NOT_FOUND"
    nowhere = await admin.post("/api/v1/jobs/job-nope/approve")
    assert nowhere.status_code == 404 and nowhere.json()["error_code"] == "JOB_NOT_FOUND"


async def test_quorum_allowlist_and_duplicate_approvers(api: Api, admin: httpx.AsyncClient) -> None:
    alice = await make_token(api.db, "alice", Scope.approvals_write, Scope.jobs_read)
    bob = await make_token(api.db, "bob", Scope.approvals_write, Scope.jobs_read)
    eve = await make_token(api.db, "eve", Scope.approvals_write, Scope.jobs_read)
    gate = {"required": True, "required_approvals": 2, "approvers": ["alice", "bob"]}
    job_id = await create_job(admin, stage("deploy", gate=gate))
    await wait_state(admin, job_id, "needs_approval")
    async with api.client(alice) as a, api.client(bob) as b, api.client(eve) as e:
        outsider = await e.post(f"/api/v1/jobs/{job_id}/approve")
        assert outsider.status_code == 403 and outsider.json()["error_code"] == "NOT_AN_APPROVER"
        first = await a.post(f"/api/v1/jobs/{job_id}/approve")
        assert first.json()["gate_state"] == "open" and first.json()["approvals"] == ["alice"]
        twice = await a.post(f"/api/v1/jobs/{job_id}/approve")
        assert twice.status_code == 409 and twice.json()["error_code"] == "DUPLICATE_APPROVER"
        inbox = (await b.get("/api/v1/approvals", params={"state": "pending"})).json()
        [entry] = [g for g in inbox["items"] if g["resource_id"] == job_id]
        assert entry["approvals_remaining"] == 1
        second = await b.post(
            f"/api/v1/approvals/{entry['gate_id']}/decide", json={"outcome": "approve"}
        )
        assert second.status_code == 200 and second.json()["gate_state"] == "approved"
    await wait_state(admin, job_id, "completed")
    assert len(await decisions_of(api, entry["gate_id"])) == 2


async def test_decision_input_is_checked_against_the_schema(admin: httpx.AsyncClient) -> None:
    schema = {
        "type": "object",
        "properties": {"rating": {"type": "integer", "minimum": 1}},
        "required": ["rating"],
    }
    job_id = await create_job(admin, stage("s", gate={"required": True, "input_schema": schema}))
    await wait_state(admin, job_id, "needs_approval")
    bad = await admin.post(f"/api/v1/jobs/{job_id}/approve", json={"input": {"rating": "high"}})
    assert bad.status_code == 422 and bad.json()["error_code"] == "INVALID_DECISION_INPUT"
    assert "input.rating" in bad.json()["detail"]
    good = await admin.post(f"/api/v1/jobs/{job_id}/approve", json={"input": {"rating": 4}})
    assert good.status_code == 200
    await wait_state(admin, job_id, "completed")


async def test_an_idempotency_key_applies_a_decision_once(
    api: Api, admin: httpx.AsyncClient
) -> None:
    job_id = await create_job(admin, stage("s", gate=GATE), stage("t", gate=GATE))
    job = await wait_state(admin, job_id, "needs_approval")
    headers = {"Idempotency-Key": "approve-s-once"}
    first = await admin.post(f"/api/v1/jobs/{job_id}/approve", headers=headers)
    second = await admin.post(f"/api/v1/jobs/{job_id}/approve", headers=headers)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json() == second.json()
    later = await wait_state(admin, job_id, "needs_approval")
    assert later["open_gate"]["stage"] == "t"
    assert len(await decisions_of(api, job["open_gate"]["gate_id"])) == 1
    # The same key on another decision is a mistake, not a replay of the first answer.
    flipped = await admin.post(
        f"/api/v1/jobs/{job_id}/reject", headers=headers, json={"reason": "changed my mind"}
    )
    assert flipped.status_code == 422, flipped.text
    assert flipped.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert (await admin.get(f"/api/v1/jobs/{job_id}")).json()["state"] == "needs_approval"


async def test_a_patch_that_breaks_params_is_refused_when_given(
    admin: httpx.AsyncClient,
) -> None:
    job_id = await create_job(admin, stage("s", gate=GATE), params={"tone": "dry"})
    await wait_state(admin, job_id, "needs_approval")
    whole = {"op": "replace", "path": "", "value": [1, 2]}
    on_reject = await admin.post(
        f"/api/v1/jobs/{job_id}/reject", json={"reason": "no", "patch": whole}
    )
    assert on_reject.status_code == 422 and on_reject.json()["error_code"] == "INVALID_PATCH"
    assert "object" in on_reject.json()["detail"]
    assert (await admin.get(f"/api/v1/jobs/{job_id}")).json()["open_gate"] is not None
    await admin.post(f"/api/v1/jobs/{job_id}/reject", json={"reason": "no"})
    await wait_state(admin, job_id, "paused")
    on_resume = await admin.post(f"/api/v1/jobs/{job_id}/resume", json={"patch": whole})
    assert on_resume.status_code == 422 and on_resume.json()["error_code"] == "INVALID_PATCH"
    resumed = await admin.post(f"/api/v1/jobs/{job_id}/resume")
    assert resumed.status_code == 200, resumed.text


async def test_gate_timers_decide_as_configured(admin: httpx.AsyncClient) -> None:
    approve = await create_job(
        admin, stage("s", gate={"required": True, "timeout_seconds": 1, "on_timeout": "approve"})
    )
    fail = await create_job(
        admin, stage("s", gate={"required": True, "timeout_seconds": 1, "on_timeout": "fail"})
    )
    reject = await create_job(admin, stage("s", gate={"required": True, "timeout_minutes": 0.02}))
    done = await wait_state(admin, approve, "completed")
    assert done["gates"][0]["decided_by"] == "timer" and done["gates"][0]["via"] == "timer"
    failed = await wait_state(admin, fail, "failed")
    assert "no decision within 1 s" in failed["error"]
    paused = await wait_state(admin, reject, "paused")
    assert paused["gates"][0]["state"] == "rejected" and paused["gates"][0]["via"] == "timer"
    assert "gate_timed_out" in await event_types(admin, approve)


async def test_auto_approve_and_reminders(admin: httpx.AsyncClient) -> None:
    auto = await create_job(admin, stage("s", gate={"required": True, "auto_approve": True}))
    done = await wait_state(admin, auto, "completed")
    assert done["gates"][0]["decided_by"] == "auto"
    assert "gate_auto_approved" in await event_types(admin, auto)
    nag = await create_job(admin, stage("s", gate={"required": True, "reminder_every_seconds": 1}))
    await wait_state(admin, nag, "needs_approval")
    for _ in range(100):
        if "gate_reminder" in await event_types(admin, nag):
            break
        await asyncio.sleep(0.1)
    assert "gate_reminder" in await event_types(admin, nag)
    await admin.post(f"/api/v1/jobs/{nag}/approve")
    await wait_state(admin, nag, "completed")


async def test_a_failing_step_fails_the_job(admin: httpx.AsyncClient) -> None:
    job_id = await create_job(
        admin, stage("boom", "sh", "-c", "echo broken; exit 4"), stage("never")
    )
    job = await wait_state(admin, job_id, "failed")
    assert "exited with status 4: broken" in job["error"] and job["stage"] == "boom"
    types = await event_types(admin, job_id)
    assert types[-1] == "job_failed" and "never" not in str(types)


@pytest.mark.parametrize(
    ("stage_timeout", "before"),
    [(10, 0), (10, 2), (None, 0)],
    ids=["short-local", "short-series", "open-ended"],
)
async def test_cancel_kills_the_running_step(
    api: Api,
    admin: httpx.AsyncClient,
    client: Client,
    tmp_path: Path,
    stage_timeout: float | None,
    before: int,
) -> None:
    """A short stage (a local activity, alone or in a series after `before` others) is
    canceled as an ordinary one is, before its own timeout would have ended it `failed`."""
    pidfile = tmp_path / "pid"
    extra: dict[str, Any] = {} if stage_timeout is None else {"timeout_seconds": stage_timeout}
    job_id = await create_job(
        admin,
        *(stage(f"first{i}", **extra) for i in range(before)),
        stage("long", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 60", **extra),
        stage("after", **extra),
    )
    await wait_state(admin, job_id, "running")
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    canceled = await admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    job = await wait_state(admin, job_id, "canceled")
    # The row names the stage that ran, also when the workflow ran it in a series.
    assert job["stage"] == "long"
    ends = [e for e in await stage_events(admin, job_id) if e[0] == "step_finished"]
    assert ends[-1] == ("step_finished", "long", "canceled")
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )
    # The row says canceled a moment before the workflow closes: wait for the close.
    handle = client.get_workflow_handle(job_id)
    deadline = time.monotonic() + 20
    while (described := await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert described.status == WorkflowExecutionStatus.CANCELED


async def test_short_stages_keep_their_timeouts_and_retries(
    api: Api, admin: httpx.AsyncClient, client: Client, tmp_path: Path
) -> None:
    """Stages that declare a short timeout run as local activities; their retries, their
    timeout and their record are those of any stage."""
    flaky, broken = tmp_path / "flaky", tmp_path / "broken"
    third_time = f"echo run >> {flaky}; [ $(wc -l < {flaky}) -ge 3 ]"
    recovers = await create_job(
        admin, stage("flaky", "sh", "-c", third_time, retries=2, timeout_seconds=5)
    )
    gives_up = await create_job(
        admin,
        stage("broken", "sh", "-c", f"echo run >> {broken}; exit 3", retries=1, timeout_seconds=5),
    )
    slow = await create_job(admin, stage("slow", "sleep", "30", timeout_seconds=1))
    assert (await wait_state(admin, recovers, "completed"))["state"] == "completed"
    assert len(flaky.read_text().splitlines()) == 3
    failed = await wait_state(admin, gives_up, "failed")
    # The stage's own failure, as an ordinary stage reports it, not an error of the workflow.
    assert failed["error"].startswith("broken: step 'broken' exited with status 3")
    assert len(broken.read_text().splitlines()) == 2
    timed_out = await wait_state(admin, slow, "failed", seconds=30)
    assert "timed out after 1.0 s" in timed_out["error"]
    types = await event_types(admin, recovers)
    assert types.count("stage_started") == types.count("step_finished") == 3
    # The markers of the local activities name their stage in the Temporal UI.
    history = await client.get_workflow_handle(recovers).fetch_history()
    markers = [
        e
        for e in history.events
        if e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    assert markers and all(b"flaky" in e.user_metadata.summary.data for e in markers)
    # What the step runs kept for a replay goes when the job ends.
    async with api.db.session() as session:
        kept = (await session.exec(select(StepRun.resource_id))).all()
    assert recovers not in kept and gives_up not in kept and slow not in kept


async def test_approving_answers_before_a_short_next_stage_ends(
    admin: httpx.AsyncClient, client: Client
) -> None:
    """The Update's answer leaves with its workflow task; a local activity started in that
    task would hold it until the stage ended."""
    job_id = await create_job(
        admin, stage("review", gate=GATE), stage("slow", "sleep", "4", timeout_seconds=10)
    )
    await wait_state(admin, job_id, "needs_approval")
    approved = await admin.post(f"/api/v1/jobs/{job_id}/approve")
    assert approved.status_code == 200, approved.text
    # The answer came while the next stage still ran.
    types = await event_types(admin, job_id)
    assert "stage_started" in types[types.index("gate_approved") :]
    assert types[-1] != "step_finished" and "job_completed" not in types
    await wait_state(admin, job_id, "completed", seconds=30)
    # The stage after the decision ran as an ordinary activity, not in the answering task.
    history = await client.get_workflow_handle(job_id).fetch_history()
    slow = [e for e in history.events if b"slow" in e.user_metadata.summary.data]
    assert slow and all(e.HasField("activity_task_scheduled_event_attributes") for e in slow)


def local_summaries(history: Any) -> list[str]:
    """The Temporal UI's names of a history's local activities (their markers)."""
    return [
        e.user_metadata.summary.data.decode().strip('"')
        for e in history.events
        if e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]


async def stage_events(admin: httpx.AsyncClient, job_id: str) -> list[tuple[str, str, str]]:
    page = (await admin.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 500})).json()
    return [
        (e["type"], e["stage"], e["status"])
        for e in page["items"]
        if e["type"] in ("stage_started", "step_finished")
    ]


async def test_consecutive_short_stages_run_as_one_series_up_to_a_gate(
    admin: httpx.AsyncClient, client: Client
) -> None:
    """Each stage of a series still has its start, its end and its tail in the log, in
    order; the series ends at a gate, and the stages right after a decision are an
    ordinary activity (they start in the task that answers the Update)."""
    short: dict[str, Any] = {"timeout_seconds": 5}
    job_id = await create_job(
        admin,
        stage("a", "echo", "A", **short),
        stage("b", "echo", "B", **short),
        stage("c", "echo", "C", gate=GATE, **short),
        stage("d", **short),
        stage("e", **short),
        stage("f", "echo", "F", **short),
    )
    job = await wait_state(admin, job_id, "needs_approval")
    assert job["stage"] == "c"
    assert await stage_events(admin, job_id) == [
        (t, s, st)
        for s in "abc"
        for t, st in (("stage_started", "running"), ("step_finished", "succeeded"))
    ]
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    await wait_state(admin, job_id, "completed")
    assert await stage_events(admin, job_id) == [
        (t, s, st)
        for s in "abcdef"
        for t, st in (("stage_started", "running"), ("step_finished", "succeeded"))
    ]
    page = (await admin.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 500})).json()
    tails = {
        e["stage"]: e["payload"]["tail"] for e in page["items"] if e["type"] == "step_finished"
    }
    assert (tails["a"], tails["b"], tails["f"]) == (["A"], ["B"], ["F"])
    history = await client.get_workflow_handle(job_id).fetch_history()
    assert local_summaries(history) == ["a … c (3 short steps)"]
    [d] = [
        e for e in history.events if e.user_metadata.summary.data == '"d … f (3 steps)"'.encode()
    ]
    assert d.HasField("activity_task_scheduled_event_attributes")


async def test_stages_without_a_timeout_run_as_one_activity_that_shows_its_stage(
    admin: httpx.AsyncClient, client: Client
) -> None:
    """Ungated stages with no retries run in one ordinary activity, whose heartbeats name
    the stage that runs (the Temporal UI shows them with the pending activity); a cancel
    reaches that stage through them."""
    job_id = await create_job(admin, stage("a"), stage("b", "sleep", "60"), stage("c"))
    handle = client.get_workflow_handle(job_id)
    deadline = time.monotonic() + 20
    while True:
        pending = (await handle.describe()).raw_description.pending_activities
        details = [d.data for p in pending for d in p.heartbeat_details.payloads]
        if details == [b'"b"']:
            break
        assert time.monotonic() < deadline, f"no heartbeat names stage b: {pending}"
        await asyncio.sleep(0.2)
    [series] = pending
    assert series.activity_type.name == "steps.run_series"
    # Each stage may lose its worker as a stage alone may.
    assert series.maximum_attempts == 1 + WORKER_LOSSES * 3
    canceled = time.monotonic()
    assert (await admin.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
    await wait_state(admin, job_id, "canceled", seconds=20)
    assert time.monotonic() - canceled < 15
    assert await stage_events(admin, job_id) == [
        ("stage_started", "a", "running"),
        ("step_finished", "a", "succeeded"),
        ("stage_started", "b", "running"),
        ("step_finished", "b", "canceled"),
    ]


async def test_a_stage_that_ignores_sigterm_is_stopped_once_in_its_series(
    admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The heartbeats go on while a stage is stopped: its kill's grace (15 s) outlasts the
    heartbeat timeout (5 s), and a timeout there would start the series again beside it."""
    count = tmp_path / "count"
    stubborn = stage(
        "b", "sh", "-c", f"echo ran >> {count}; trap '' TERM; sleep 100", timeout_seconds=2
    )
    job_id = await create_job(admin, stage("a"), stubborn, stage("c"))
    job = await wait_state(admin, job_id, "failed", "completed", seconds=60)
    assert job["state"] == "failed"
    assert job["error"].startswith("b: step 'b' timed out after 2"), job["error"]
    assert count.read_text().split() == ["ran"]


async def test_a_series_of_stages_with_large_params_stays_within_temporals_limits(
    admin: httpx.AsyncClient,
) -> None:
    """Each stage's input carries the params twice: an ordinary series takes only the
    stages that fit one input Temporal's server takes."""
    params = {"blob": "x" * 60_000}
    job_id = await create_job(admin, *(stage(f"s{n}") for n in range(20)), params=params)
    job = await wait_state(admin, job_id, "completed", "failed", seconds=60)
    assert job["state"] == "completed", job


async def test_a_stage_that_fails_or_times_out_ends_its_series(
    api: Api, admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    short: dict[str, Any] = {"timeout_seconds": 5}
    never = tmp_path / "never"
    boom = await create_job(
        admin,
        stage("a", **short),
        stage("boom", "sh", "-c", "echo broken; exit 4", **short),
        stage("never", "touch", str(never), **short),
    )
    slow = await create_job(
        admin, stage("a", **short), stage("slow", "sleep", "30", timeout_seconds=1), stage("z")
    )
    failed = await wait_state(admin, boom, "failed")
    assert failed["error"] == "boom: step 'boom' exited with status 4: broken"
    assert failed["stage"] == "boom" and not never.exists()
    assert [s for _, s, _ in await stage_events(admin, boom)] == ["a", "a", "boom", "boom"]
    timed_out = await wait_state(admin, slow, "failed", seconds=30)
    assert timed_out["error"] == "slow: step 'slow' timed out after 1.0 s"
    assert (await stage_events(admin, slow))[-1] == ("step_finished", "slow", "timed_out")
    assert (await event_types(admin, slow))[-1] == "job_failed"


async def test_artifacts_list_and_download(admin: httpx.AsyncClient) -> None:
    job_id = await create_job(admin, stage("build", "echo", "built it"))
    await wait_state(admin, job_id, "completed")
    [artifact] = (await admin.get(f"/api/v1/jobs/{job_id}/artifacts")).json()["items"]
    assert artifact["stage"] == "build" and artifact["size_bytes"] == len("built it\n")
    body = await admin.get(f"/api/v1/jobs/{job_id}/artifacts/{artifact['id']}")
    assert body.status_code == 200 and body.text == "built it\n"
    other = await admin.get(f"/api/v1/jobs/job-other/artifacts/{artifact['id']}")
    assert other.status_code == 404


async def test_bad_job_bodies_are_422_and_write_nothing(admin: httpx.AsyncClient) -> None:
    both = await admin.post("/api/v1/jobs", json={"pipeline": "x", "stages": [stage("a")]})
    unknown = await admin.post("/api/v1/jobs", json={"pipeline": "nope"})
    dup = await admin.post("/api/v1/jobs", json={"stages": [stage("a"), stage("a")]})
    bad_gate = await admin.post(
        "/api/v1/jobs", json={"stages": [stage("a", gate={"on_timeout": "explode"})]}
    )
    assert both.status_code == unknown.status_code == dup.status_code == bad_gate.status_code == 422
    assert unknown.json()["error_code"] == "UNKNOWN_PIPELINE"
    assert "on_timeout" in bad_gate.json()["detail"]
    assert (await admin.get("/api/v1/jobs")).json()["total"] == 0


async def test_jobs_show_state_and_gate_in_the_temporal_ui(
    admin: httpx.AsyncClient, client: Client, worker: Worker
) -> None:
    job_id = await create_job(admin, stage("review", gate=GATE))
    await wait_state(admin, job_id, "needs_approval")
    described = await client.get_workflow_handle(job_id).describe()
    attrs = {k.name: v for k, v in described.typed_search_attributes}
    assert attrs["PilothouseKind"] == "job"
    assert attrs["PilothouseState"] == "needs_approval"
    assert attrs["PilothouseGate"].endswith(":review:1")
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    await wait_state(admin, job_id, "completed")


async def test_a_job_upserts_its_state_when_it_changes_not_at_every_stage(
    admin: httpx.AsyncClient, client: Client, worker: Worker
) -> None:
    """Each upsert is a history event and a visibility write on the server."""
    job_id = await create_job(admin, *(stage(f"s{i}") for i in range(5)))
    await wait_state(admin, job_id, "completed")
    handle = client.get_workflow_handle(job_id)
    await handle.result()
    history = await handle.fetch_history()
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in history.events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
    ]
    upserted = [u["PilothouseState"].data for u in upserts if "PilothouseState" in u]
    assert upserted == [b'"running"', b'"completed"']
    attrs = {k.name: v for k, v in (await handle.describe()).typed_search_attributes}
    assert attrs["PilothouseState"] == "completed"


async def test_a_job_that_cannot_start_leaves_nothing_behind(api: Api) -> None:
    settings: Settings = api.settings
    offline = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    async with (
        serve(offline) as base,
        httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {api.admin_token}"}
        ) as client,
    ):
        answer = await client.post(
            "/api/v1/jobs", json={"stages": [stage("a")]}, headers={"Idempotency-Key": "k1"}
        )
        assert answer.status_code == 503
        assert answer.json()["error_code"] == "TEMPORAL_UNAVAILABLE"
        assert (await client.get("/api/v1/jobs")).json()["total"] == 0
    async with api.db.session() as session:
        assert (await session.exec(select(Event))).all() == []
        assert (await session.exec(select(IdempotencyKey))).all() == []


async def test_racing_decisions_give_exactly_one_winner(api: Api, admin: httpx.AsyncClient) -> None:
    job_id = await create_job(admin, stage("race", gate=GATE))
    job = await wait_state(admin, job_id, "needs_approval")
    tokens = [
        await make_token(api.db, f"racer{i}", Scope.approvals_write, Scope.jobs_read)
        for i in range(20)
    ]
    clients = [api.client(t) for t in tokens]
    try:
        answers = await asyncio.gather(
            *(
                c.post(
                    f"/api/v1/jobs/{job_id}/{'approve' if i % 2 else 'reject'}",
                    json={"reason": f"racer {i}"},
                )
                for i, c in enumerate(clients)
            )
        )
    finally:
        for c in clients:
            await c.aclose()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * 19, [a.text for a in answers if a.status_code != 409]
    assert {a.json()["error_code"] for a in answers if a.status_code == 409} <= {
        "GATE_ALREADY_DECIDED",
        "GATE_NOT_OPEN",
    }
    # The winning decision is written with what the job does next.
    await wait_state(admin, job_id, "paused", "completed")
    assert len(await decisions_of(api, job["open_gate"]["gate_id"])) == 1
