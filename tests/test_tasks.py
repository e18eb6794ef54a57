"""Coding-agent tasks end to end: a local bare origin, the fake Claude Code agent, a fake
GitHub API and a webhook receiver on loopback, through the served API and a real worker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import col, select
from temporalio.api.history.v1 import History
from temporalio.client import Client

from settings import Settings
from store.models import Event, Task, WebhookDelivery
from tests.conftest import Api
from tests.git_servers import FakeGitHub, branch_of, fake_github, make_origin, run_git
from tests.sse_client import Frame, frames
from tests.test_replay import HISTORIES, REPLAYER
from tests.test_steps import alive
from tests.webhook_receiver import Receiver, receiving

FAKE = Path(__file__).with_name("fake_claude.py")
AGENT = (
    f"{sys.executable} {FAKE} -p {{prompt}} --output-format stream-json --verbose "
    "--max-turns {max_turns} --model {model} --permission-mode {mode}"
)
SECRET = "whsec-0123456789abcdef"
TOKEN = "ghp_FAKEtokenFORtests0123456789"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github() as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving(SECRET) as server:
        yield server


@pytest.fixture
def settings(
    settings: Settings,
    github: FakeGitHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Settings:
    # The fake agent keeps its transcripts under $HOME, as the real one does.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    marker = request.node.get_closest_marker("settings")
    return settings.model_copy(
        update={
            "agent_command": AGENT,
            "github_api_url": github.base_url,
            "webhook_secret": SecretStr(SECRET),
            "webhook_timeout_seconds": 1.0,
            "webhook_backoff_seconds": [0.2, 0.2],
            "agent_kill_grace_seconds": 1.0,
            **(marker.kwargs if marker else {}),
        }
    )


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path / "remotes")


async def create(admin: httpx.AsyncClient, origin: Path | None, prompt: str, **body: Any) -> str:
    if origin is not None:
        body["repo_url"] = str(origin)
    answer = await admin.post("/api/v1/tasks", json={"prompt": prompt, **body})
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["status"] == "pending" and created["id"].startswith("task-")
    return str(created["id"])


async def wait_task(
    admin: httpx.AsyncClient, task_id: str, *states: str, seconds: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        task: dict[str, Any] = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
        if task["status"] in states:
            return task
        assert time.monotonic() < deadline, f"task never reached {states}: {task}"
        await asyncio.sleep(0.1)


async def stream(admin: httpx.AsyncClient, task_id: str, **headers: str) -> list[Frame]:
    """Every frame of the task's stream, until it closes."""
    got = []
    async with admin.stream("GET", f"/api/v1/tasks/{task_id}/stream", headers=headers) as r:
        assert r.status_code == 200
        async for frame in frames(r):
            got.append(frame)
    return got


async def event_rows(api: Api, task_id: str) -> list[Event]:
    async with api.db.session() as session:
        rows = await session.exec(
            select(Event).where(Event.resource_id == task_id).order_by(col(Event.id))
        )
        return list(rows)


async def test_a_task_streams_takes_an_instruction_and_opens_a_pull_request(
    api: Api,
    admin: httpx.AsyncClient,
    worker: object,
    origin: Path,
    github: FakeGitHub,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiosqlite")  # every statement, twice
    task_id = await create(
        admin,
        origin,
        "Fix the failing tests [edit app.py]",
        access_token=TOKEN,
        callback_url=receiver.url,
        config={"target_branch": "develop", "max_turns": 5, "ai_model": "claude-test"},
    )
    first = await stream(admin, task_id)
    assert first[0].event == "connected"
    assert first[0].data is not None and first[0].data["task_id"] == task_id
    assert first[0].data["status"] in ("pending", "cloning", "running")
    assert first[-1].event == "done" and first[-1].data == {"status": "completed"}
    data = [f for f in first if f.event is None and f.data is not None]
    assert all(f.id is not None for f in data)
    kinds = {f.data["type"] for f in data if f.data}
    assert {"system", "git", "cli", "stream", "result"} <= kinds
    init = next(f.data for f in data if f.data and f.data["event"] == "agent.system")
    assert init["data"]["type"] == "system" and init["data"]["subtype"] == "init"
    assert init["data"]["model"] == "claude-test"

    task = await wait_task(admin, task_id, "completed")
    assert task["branch"] == f"pilothouse/{task_id}" and task["iteration"] == 1
    assert task["changes_summary"]["files_changed"] == 1
    assert task["usage"]["input_tokens"] > 0 and task["agent_session_id"]
    workspace = Path(task["workspace"])
    assert "fake-claude: Fix the failing tests" in (workspace / "app.py").read_text()
    assert (workspace / "develop.txt").exists(), "it starts from the target branch"

    # A follow-up resumes the agent's session in the same workspace.
    last_id = max(f.id for f in data if f.id is not None)
    answer = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "Add tests"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": task_id, "status": "running", "iteration": 2}
    refused = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "more"})
    assert refused.status_code == 409 and refused.json()["error_code"] == "TASK_NOT_AWAITING"
    second = await stream(admin, task_id, **{"Last-Event-ID": str(last_id)})
    ids = [f.id for f in second if f.id is not None]
    assert ids and min(ids) > last_id, "no event twice"
    assert second[-1].event == "done"
    task = await wait_task(admin, task_id, "completed")
    full = (await admin.get(f"/api/v1/tasks/{task_id}", params={"include": "iterations"})).json()
    one, two = full["iterations"]
    assert (one["number"], two["number"]) == (1, 2)
    assert one["status"] == two["status"] == "completed"
    assert two["prompt"] == "Add tests" and two["started_at"] and two["ended_at"]
    assert one["changes"] == {"files_changed": 1, "insertions": 1, "deletions": 0}
    assert full["workspace"] == str(workspace)
    started = [e for e in await event_rows(api, task_id) if e.type == "stage_started"]
    assert "--resume" in started[-1].payload["argv"]
    assert one["agent_session_id"] in started[-1].payload["argv"]

    # The pull request: committed, pushed to origin, opened on GitHub.
    answer = await admin.post(
        f"/api/v1/tasks/{task_id}/create-pr",
        json={"title": "Fix auth tests", "description": "By the agent", "target_branch": "main"},
    )
    assert answer.status_code == 200, answer.text
    pr = answer.json()
    assert pr["branch"] == f"pilothouse/{task_id}" and pr["pr_number"] == 1
    assert branch_of(origin, pr["branch"]) is not None
    log = run_git(origin, "log", "--format=%s", pr["branch"], "-1")
    assert log.strip() == "Fix auth tests"
    [post] = [s for s in github.seen if s.method == "POST"]
    assert post.body == {
        "title": "Fix auth tests",
        "body": "By the agent",
        "head": pr["branch"],
        "base": "main",
    }
    assert post.authorization == f"Bearer {TOKEN}"
    task = await wait_task(admin, task_id, "pr_created")
    assert task["pr_url"] == pr["pr_url"] and task["finished_at"] is None
    again = await admin.post(f"/api/v1/tasks/{task_id}/create-pr", json={"title": "again"})
    assert again.status_code == 409 and again.json()["error_code"] == "TASK_NOT_READY"

    # A review asks for more: the task takes an instruction, and the same pull request
    # gets the new commit.
    answer = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "[edit x.py]"})
    assert answer.status_code == 200, answer.text
    await wait_task(admin, task_id, "completed")
    answer = await admin.post(f"/api/v1/tasks/{task_id}/create-pr", json={"title": "more"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["pr_number"] == pr["pr_number"]
    assert "x.py" in run_git(origin, "show", "--name-only", "--format=", pr["branch"])

    # Webhooks: one per completed iteration and one for the pull request, all signed.
    hooks = await receiver.wait_for(5)
    events = [h.headers["X-Pilothouse-Event"] for h in hooks]
    assert events == [
        "task.completed",
        "task.completed",
        "task.pr_created",
        "task.completed",
        "task.pr_created",
    ]
    assert all(h.signature_valid for h in hooks)
    body = json.loads(hooks[0].body)
    assert set(body) == {
        "task_id",
        "status",
        "result",
        "changes_summary",
        "usage",
        "trace_id",
        "finished_at",
    }
    assert body["task_id"] == task_id and body["status"] == "completed"
    assert body["changes_summary"]["files_changed"] == 1
    assert hooks[0].headers["X-Trace-ID"] == task["trace_id"] == body["trace_id"]

    # The token went to GitHub and nowhere else.
    responses = [await admin.get(f"/api/v1/tasks/{task_id}", params={"include": "iterations"})]
    responses.append(await admin.get(f"/api/v1/tasks/{task_id}/events", params={"limit": 500}))
    responses.append(await admin.get("/api/v1/tasks"))
    for response in responses:
        assert TOKEN not in response.text
    for event in await event_rows(api, task_id):
        assert TOKEN not in json.dumps(event.payload) + event.message
    async with api.db.session() as session:
        row = await session.get(Task, task_id)
    assert row is not None and row.credential and TOKEN not in row.credential
    assert TOKEN not in (workspace / ".git" / "config").read_text()
    for record in caplog.records:
        assert TOKEN not in record.getMessage()


async def test_a_pr_gate_holds_the_push_until_a_human_approves(
    api: Api,
    admin: httpx.AsyncClient,
    worker: object,
    origin: Path,
    github: FakeGitHub,
    client: Client,
) -> None:
    gate = {"required": True, "reason_required_on_reject": True}
    task_id = await create(admin, origin, "Change it [edit app.py]", config={"pr_gate": gate})
    await wait_task(admin, task_id, "completed")
    answer = await admin.post(f"/api/v1/tasks/{task_id}/create-pr", json={"title": "First"})
    assert answer.status_code == 202, answer.text
    gate_id = answer.json()["gate_id"]
    inbox = (await admin.get("/api/v1/approvals")).json()["items"]
    [waiting] = [g for g in inbox if g["gate_id"] == gate_id]
    assert "1 files changed" in waiting["config"]["why"]
    assert branch_of(origin, f"pilothouse/{task_id}") is None, "nothing left before approval"
    assert not github.seen

    rejected = await admin.post(
        f"/api/v1/approvals/{gate_id}/decide",
        json={"outcome": "reject", "reason": "add tests first"},
    )
    assert rejected.status_code == 200, rejected.text
    task = await wait_task(admin, task_id, "awaiting_instruction")
    assert "add tests first" in (task["error"] or "")
    assert branch_of(origin, f"pilothouse/{task_id}") is None and not github.seen

    answer = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "[edit t.py]"})
    assert answer.status_code == 200, answer.text
    await wait_task(admin, task_id, "completed")
    answer = await admin.post(f"/api/v1/tasks/{task_id}/create-pr", json={"title": "Second"})
    assert answer.status_code == 202
    gate_id = answer.json()["gate_id"]
    approved = await admin.post(f"/api/v1/approvals/{gate_id}/decide", json={"outcome": "approve"})
    assert approved.status_code == 200, approved.text
    task = await wait_task(admin, task_id, "pr_created")
    assert task["pr_number"] == 1 and branch_of(origin, f"pilothouse/{task_id}") is not None

    # Its history replays against today's code, and guards the workflow's shape.
    history = await client.get_workflow_handle(task_id).fetch_history()
    await REPLAYER.replay_workflow(history)
    if os.environ.get("PILOTHOUSE_RECORD_HISTORIES"):
        recorded = History(events=history.events).SerializeToString()
        (HISTORIES / "task_gate_reject_instruct_approve.pb").write_bytes(recorded)


async def test_cancel_kills_the_agent_mid_iteration(
    api: Api, admin: httpx.AsyncClient, worker: object, origin: Path, tmp_path: Path
) -> None:
    task_id = await create(admin, origin, "[slow 30] [ignore-term] [child] work slowly")
    await wait_task(admin, task_id, "running")
    pids_file = tmp_path / "home" / ".fake-claude" / "pids"
    deadline = time.monotonic() + 30
    while not (pids_file.exists() and pids_file.read_text().strip()):
        assert time.monotonic() < deadline, "the agent never started"
        await asyncio.sleep(0.05)
    pid = int(pids_file.read_text().split()[-1])
    answer = await admin.post(f"/api/v1/tasks/{task_id}/cancel")
    assert answer.status_code == 200, answer.text
    task = await wait_task(admin, task_id, "canceled")
    assert task["finished_at"]
    assert not alive(pid), "the agent's process is gone"
    late = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "more"})
    assert late.status_code == 409


async def test_a_silent_agent_is_killed_and_the_task_fails_with_the_reason(
    api: Api, admin: httpx.AsyncClient, worker: object, origin: Path, receiver: Receiver
) -> None:
    task_id = await create(
        admin,
        origin,
        "[hang] think forever",
        callback_url=receiver.url,
        config={"idle_timeout_seconds": 1},
    )
    task = await wait_task(admin, task_id, "failed")
    assert "idle" in task["error"] or "silent" in task["error"] or "nothing" in task["error"]
    [hook] = await receiver.wait_for(1)
    assert hook.headers["X-Pilothouse-Event"] == "task.failed"
    frames_ = await stream(admin, task_id)
    assert frames_[-1].event == "done" and frames_[-1].data == {"status": "failed"}


async def test_a_hanging_webhook_receiver_holds_nothing(
    api: Api, admin: httpx.AsyncClient, worker: object, origin: Path, receiver: Receiver
) -> None:
    receiver.hang()
    task_id = await create(admin, origin, "quick one", callback_url=receiver.url)
    await wait_task(admin, task_id, "completed")
    answer = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "again"})
    assert answer.status_code == 200
    await wait_task(admin, task_id, "completed")
    deadline = time.monotonic() + 30
    while True:
        async with api.db.session() as session:
            rows = list(
                await session.exec(
                    select(WebhookDelivery).where(WebhookDelivery.resource_id == task_id)
                )
            )
        if len(rows) >= 6:
            break
        assert time.monotonic() < deadline, f"{len(rows)} attempts recorded"
        await asyncio.sleep(0.1)
    assert not any(r.delivered for r in rows)
    assert {r.attempt for r in rows} == {1, 2, 3}


async def test_instructions_and_pull_requests_are_refused_where_they_cannot_run(
    api: Api, admin: httpx.AsyncClient, worker: object
) -> None:
    missing = await admin.post("/api/v1/tasks/task-nope/instruct", json={"prompt": "x"})
    assert missing.status_code == 404
    typo = await admin.post(
        "/api/v1/tasks", json={"prompt": "x", "config": {"max_turn": 3}, "repo_url": "/tmp/x"}
    )
    assert typo.status_code == 422 and "max_turns" in typo.json()["detail"]
    both = await admin.post(
        "/api/v1/tasks", json={"prompt": "x", "access_token": "a", "provider_key": "k"}
    )
    assert both.status_code == 422
    unknown_key = await admin.post("/api/v1/tasks", json={"prompt": "x", "provider_key": "nokey"})
    assert unknown_key.status_code == 422 and unknown_key.json()["error_code"] == "UNKNOWN_KEY"
    bad_url = await admin.post("/api/v1/tasks", json={"prompt": "x", "callback_url": "ftp://x"})
    assert bad_url.status_code == 422
    token_in_url = await admin.post(
        "/api/v1/tasks", json={"prompt": "x", "repo_url": f"https://{TOKEN}@github.com/o/r.git"}
    )
    assert token_in_url.status_code == 422 and TOKEN not in token_in_url.text
    ours = await admin.post(
        "/api/v1/tasks",
        json={"prompt": "x", "repo_url": str(api.settings.data_dir / "mirrors" / "x.git")},
    )
    assert ours.status_code == 422 and ours.json()["error_code"] == "REPOSITORY_NOT_ALLOWED"
    for odd in ("run-1", "x" * 300, ".."):
        answer = await admin.delete(f"/api/v1/workspaces/{odd}")
        assert answer.status_code in (404, 422), (odd, answer.text)
    # A task on a scratch workspace runs, but has nothing to open a pull request from.
    task_id = await create(admin, None, "scratch work")
    await wait_task(admin, task_id, "completed")
    pr = await admin.post(f"/api/v1/tasks/{task_id}/create-pr", json={"title": "x"})
    assert pr.status_code == 409 and pr.json()["error_code"] == "TASK_NOT_READY"


async def test_workspaces_are_listed_and_deleted_only_when_idle(
    api: Api, admin: httpx.AsyncClient, worker: object, origin: Path
) -> None:
    task_id = await create(admin, origin, "[slow 1] slow enough to be seen running")
    task = await wait_task(admin, task_id, "running")
    busy = await admin.delete(f"/api/v1/workspaces/{task_id}")
    assert busy.status_code == 409 and busy.json()["error_code"] == "TASK_RUNNING"
    task = await wait_task(admin, task_id, "completed")
    listed = (await admin.get("/api/v1/workspaces")).json()["items"]
    [mine] = [w for w in listed if w["task_id"] == task_id]
    assert mine["task_status"] == "completed" and mine["path"] == task["workspace"]
    assert (await admin.delete(f"/api/v1/workspaces/{task_id}")).status_code == 204
    deadline = time.monotonic() + 30
    while Path(task["workspace"]).exists():
        assert time.monotonic() < deadline, "the workspace stayed"
        await asyncio.sleep(0.1)
    frames_ = await stream(admin, task_id)
    assert frames_[-1].event == "done"
    late = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "more"})
    assert late.status_code == 409
    assert (await admin.delete(f"/api/v1/workspaces/{task_id}")).status_code == 404


@pytest.mark.settings(task_idle_ttl_seconds=1.0)
async def test_an_idle_task_finishes_and_lets_its_workspace_go(
    api: Api, admin: httpx.AsyncClient, worker: object, origin: Path
) -> None:
    task_id = await create(admin, origin, "quick")
    task = await wait_task(admin, task_id, "completed")
    deadline = time.monotonic() + 30
    while (await admin.get(f"/api/v1/tasks/{task_id}")).json()["finished_at"] is None:
        assert time.monotonic() < deadline, "the idle task never finished"
        await asyncio.sleep(0.1)
    assert not Path(task["workspace"]).exists()
    [released] = [e for e in await event_rows(api, task_id) if e.type == "system.released"]
    assert released.payload["by"] == "idle_ttl" and released.final
    late = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "more"})
    assert late.status_code == 409


async def test_the_registered_mcp_servers_go_to_the_agent(
    api: Api, admin: httpx.AsyncClient, worker: object
) -> None:
    for name, enabled in (("context7", True), ("off", False)):
        server = {"name": name, "package": f"@mcp/{name}", "enabled": enabled}
        assert (await admin.post("/api/v1/mcp/servers", json=server)).status_code == 201
    task_id = await create(admin, None, "use the tools")
    await wait_task(admin, task_id, "completed")
    [init] = [e for e in await event_rows(api, task_id) if e.type == "agent.system"]
    assert init.payload["mcp_servers"] == [{"name": "context7", "status": "connected"}]
