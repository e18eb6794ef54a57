"""Task definitions, their executions and their Temporal Schedules, end to end: the served
API, a real worker, the Temporal dev server and the fake agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
from temporalio.client import Client, ScheduleOverlapPolicy
from temporalio.service import RPCError, RPCStatusCode

from tests.conftest import Api
from tests.test_tasks import event_rows, github, settings  # noqa: F401  (fixtures)

T = TypeVar("T")
DAILY = {
    "name": "Daily Log Analysis",
    "description": "Analyze application logs",
    "prompt_template": "Analyze logs from {{date}}",
    "variables": {"date": "yesterday"},
    "allowed_tools": ["Read", "Bash"],
    "schedule_cron": "0 9 * * *",
    "timezone": "Europe/Paris",
    "generate_report": True,
    "report_format": "markdown",
}


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, seconds: float = 60) -> T:
    deadline = time.monotonic() + seconds
    while True:
        got = await probe()
        if got is not None:
            return got
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


async def define(admin: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    answer = await admin.post("/api/v1/tasks", json={**DAILY, **fields})
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def executions(admin: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    answer = await admin.get(f"/api/v1/tasks/{task_id}/executions", params={"limit": 100})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def finished(admin: httpx.AsyncClient, task_id: str, count: int) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        done = [e for e in await executions(admin, task_id) if e["completed_at"]]
        return done if len(done) >= count else None

    return await eventually(probe, f"{count} executions of {task_id} finished")


async def test_a_schedule_is_made_fires_when_triggered_and_records_its_execution(
    api: Api, admin: httpx.AsyncClient, worker: object, client: Client
) -> None:
    created = await define(admin)
    task_id = created["id"]
    assert created["is_scheduled"] and created["schedule_cron"] == "0 9 * * *"
    assert created["schedule_id"] == f"task-schedule-{task_id}"

    handle = client.get_schedule_handle(created["schedule_id"])
    described = await handle.describe()
    spec = described.schedule.spec
    assert spec.time_zone_name == "Europe/Paris"
    assert spec.cron_expressions == ["0 9 * * *"] or spec.calendars, spec
    assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert described.schedule.policy.catchup_window == timedelta(minutes=10)
    assert not described.schedule.state.paused
    [next_at, *_] = described.info.next_action_times
    assert next_at.astimezone().minute == 0

    # As an operator would from the Temporal UI: the run never passes through the API.
    await handle.trigger()
    [run] = await finished(admin, task_id, 1)
    assert run["trigger"] == "schedule" and run["status"] == "completed", run["error"]
    assert run["id"].startswith(f"{task_id}-exec-")
    assert run["duration_ms"] is not None and run["duration_ms"] >= 0
    assert run["usage"]["input_tokens"] > 0, "the fake agent's usage is recorded"
    execution = (await admin.get(f"/api/v1/tasks/{run['id']}")).json()
    assert execution["prompt"] == "Analyze logs from yesterday"
    assert execution["definition_id"] == task_id and execution["kind"] == "run"
    started = [e for e in await event_rows(api, run["id"]) if e.type == "stage_started"]
    argv = started[0].payload["argv"]
    assert argv[argv.index("--allowedTools") + 1] == "Read,Bash"

    # The report: a markdown artifact of the execution.
    artifacts = (await admin.get(f"/api/v1/tasks/{run['id']}/artifacts")).json()["items"]
    [report] = [a for a in artifacts if a["kind"] == "report"]
    body = await admin.get(f"/api/v1/tasks/{run['id']}/artifacts/{report['id']}")
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/markdown")
    assert (
        body.text.startswith("# Daily Log Analysis") and "Analyze logs from yesterday" in body.text
    )

    definition = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
    assert definition["kind"] == "definition" and definition["is_active"] is True
    assert definition["last_run_at"] and definition["next_run_at"]
    listed = (await admin.get("/api/v1/tasks", params={"kind": "definition"})).json()["items"]
    assert [t["id"] for t in listed] == [task_id]
    runs = (await admin.get("/api/v1/tasks", params={"kind": "run"})).json()["items"]
    assert [t["id"] for t in runs] == [run["id"]]

    # DELETE removes the schedule; the execution stays.
    assert (await admin.delete(f"/api/v1/tasks/{task_id}")).status_code == 204
    with pytest.raises(RPCError) as gone:
        await handle.describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
    assert (await admin.get(f"/api/v1/tasks/{task_id}")).status_code == 404
    assert (await admin.get(f"/api/v1/tasks/{run['id']}")).status_code == 200


async def test_a_schedule_fires_on_its_own_pauses_and_resumes(
    admin: httpx.AsyncClient, worker: object, client: Client
) -> None:
    created = await define(admin, schedule_cron="@every 2s", generate_report=False)
    task_id = created["id"]
    first = await finished(admin, task_id, 1)
    assert all(e["trigger"] == "schedule" for e in first)

    paused = await admin.post(f"/api/v1/tasks/{task_id}/pause")
    assert paused.status_code == 200 and paused.json() == {"id": task_id, "is_active": False}
    handle = client.get_schedule_handle(created["schedule_id"])
    assert (await handle.describe()).schedule.state.paused
    assert (await admin.get(f"/api/v1/tasks/{task_id}")).json()["is_active"] is False
    # Let what was already started finish, then watch three intervals go by with no firing.
    settled = len(await finished(admin, task_id, len(await executions(admin, task_id))))
    window = time.monotonic() + 6
    while time.monotonic() < window:
        assert len(await executions(admin, task_id)) == settled, "a paused schedule fired"
        await asyncio.sleep(0.2)

    unpaused = await admin.post(f"/api/v1/tasks/{task_id}/unpause")
    assert unpaused.status_code == 200 and unpaused.json()["is_active"] is True
    await finished(admin, task_id, settled + 1)
    assert (await admin.delete(f"/api/v1/tasks/{task_id}")).status_code == 204


async def test_patch_changes_the_schedule(
    admin: httpx.AsyncClient, worker: object, client: Client
) -> None:
    created = await define(admin)
    task_id = created["id"]
    handle = client.get_schedule_handle(created["schedule_id"])
    assert (await admin.post(f"/api/v1/tasks/{task_id}/pause")).status_code == 200
    changed = await admin.patch(
        f"/api/v1/tasks/{task_id}",
        json={"schedule_cron": "30 6 * * 1", "timezone": "UTC", "overlap_policy": "buffer_one"},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["schedule_cron"] == "30 6 * * 1"
    described = await handle.describe()
    assert described.schedule.spec.time_zone_name == "UTC"
    assert described.schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
    assert described.schedule.state.paused, "a change keeps the pause"
    # No schedule any more: it goes from Temporal too.
    off = await admin.patch(f"/api/v1/tasks/{task_id}", json={"is_scheduled": False})
    assert off.status_code == 200 and off.json()["is_scheduled"] is False
    with pytest.raises(RPCError):
        await handle.describe()


async def test_bad_input_is_refused_naming_the_field(
    api: Api, admin: httpx.AsyncClient, worker: object, client: Client
) -> None:
    async def refused(body: dict[str, Any], field: str) -> None:
        answer = await admin.post("/api/v1/tasks", json={**DAILY, **body})
        assert answer.status_code == 422, answer.text
        assert field in answer.json()["detail"], answer.text

    await refused({"schedule_cron": "0 9 * *"}, "schedule_cron")
    await refused({"schedule_cron": "every morning"}, "schedule_cron")
    # Five fields, but a minute Temporal refuses: still the caller's error.
    await refused({"schedule_cron": "99 9 * * *"}, "schedule_cron")
    await refused({"timezone": "Mars/Olympus"}, "timezone")
    await refused({"variables": {}}, "variables.date")
    await refused({"schedul_cron": "0 9 * * *"}, "schedule_cron")
    await refused({"sdk_options": {"max_turn": 3}}, "max_turns")
    await refused({"template_id": "nope"}, "template_id")
    # A definition names its repository as a task does: no token in it, none of ours.
    await refused({"repo_url": "https://ghp_secret123@github.com/o/r.git"}, "repo_url")
    await refused({"repo_url": str(api.settings.workspaces_dir / "task-x")}, "repo_url")
    listed = (await admin.get("/api/v1/tasks", params={"kind": "definition"})).json()
    assert listed["total"] == 0, "nothing refused was kept"
    # A key whose first request Temporal refused is free for a corrected one.
    keyed = {"Idempotency-Key": "k-1"}
    first = await admin.post(
        "/api/v1/tasks", json={**DAILY, "schedule_cron": "99 9 * * *"}, headers=keyed
    )
    assert first.status_code == 422
    again = await admin.post("/api/v1/tasks", json=DAILY, headers=keyed)
    repeat = await admin.post("/api/v1/tasks", json=DAILY, headers=keyed)
    assert again.status_code == repeat.status_code == 201
    assert again.json()["id"] == repeat.json()["id"], "a repeated create makes one definition"
    other = await admin.post("/api/v1/tasks", json={**DAILY, "name": "x"}, headers=keyed)
    assert other.status_code == 422 and other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert (await admin.delete(f"/api/v1/tasks/{again.json()['id']}")).status_code == 204

    created = await define(admin, schedule_cron=None, variables={})
    task_id = created["id"]
    assert created["is_scheduled"] is False and created["schedule_id"] is None
    missing = await admin.post(f"/api/v1/tasks/{task_id}/execute", json={"variables": {}})
    assert missing.status_code == 422 and "variables.date: missing" in missing.json()["detail"]
    bad = await admin.patch(f"/api/v1/tasks/{task_id}", json={"schedule_cron": "0 9"})
    assert bad.status_code == 422 and "schedule_cron" in bad.json()["detail"]
    pause = await admin.post(f"/api/v1/tasks/{task_id}/pause")
    assert pause.status_code == 409
    unknown = await admin.post(f"/api/v1/tasks/{task_id}/execute", json={"vars": {}})
    assert unknown.status_code == 422 and "variables" in unknown.json()["detail"]
    assert (await admin.post("/api/v1/tasks/task-nope/execute", json={})).status_code == 404
    kept = await admin.patch(f"/api/v1/tasks/{task_id}", json={"name": None, "timezone": None})
    assert kept.status_code == 200 and kept.json()["name"] == DAILY["name"]
    instruct = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "x"})
    assert instruct.status_code == 409 and instruct.json()["error_code"] == "NOT_A_RUN"


async def test_an_execution_without_a_repository_runs_the_agent_and_records_usage(
    api: Api, admin: httpx.AsyncClient, worker: object
) -> None:
    created = await define(admin, schedule_cron=None, generate_report=False)
    task_id = created["id"]
    answer = await admin.post(
        f"/api/v1/tasks/{task_id}/execute", json={"variables": {"date": "2025-10-19"}}
    )
    assert answer.status_code == 200, answer.text
    started = answer.json()
    assert set(started) == {"execution_id", "session_id", "status", "started_at"}
    [run] = await finished(admin, task_id, 1)
    assert run["id"] == started["execution_id"] and run["trigger"] == "manual"
    assert run["status"] == "completed" and run["usage"]["output_tokens"] > 0
    task = (await admin.get(f"/api/v1/tasks/{run['id']}", params={"include": "iterations"})).json()
    assert task["prompt"] == "Analyze logs from 2025-10-19" and task["repo_url"] is None
    assert task["iterations"][0]["usage"]["input_tokens"] > 0
    assert task["finished_at"], "an execution ends after its run"
    artifacts = (await admin.get(f"/api/v1/tasks/{run['id']}/artifacts")).json()["items"]
    assert not [a for a in artifacts if a["kind"] == "report"], "no report unless asked"
    definition = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
    assert definition["last_run_at"] and definition["is_scheduled"] is False
