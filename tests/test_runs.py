"""Runs end to end: tiers of phases whose builders and auditors are real commands in a real
git workspace, or outside executors posting over HTTP; gates for escalations, risky
patches and budgets; a worker killed mid-phase."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from store.engine import Database
from store.models import Event, GateRow, IdempotencyKey, Run, RunPhase, RunTier
from tests.conftest import Api, serve
from tests.git_servers import run_git
from tests.jobs_helpers import GATE, create_job, stage
from tests.test_replay import HISTORIES, REPLAYER

pytestmark = pytest.mark.usefixtures("worker")

APPROVE = 'echo \'{"recommendation": "approve", "tokens_used": 10}\''


def cmd(script: str) -> dict[str, Any]:
    return {"executor": "command", "run": ["sh", "-c", script]}


def phase(phase_id: str, tier: str, index: int = 0, **extra: Any) -> dict[str, Any]:
    return {"phase_id": phase_id, "phase_index": index, "tier_id": tier, "name": phase_id, **extra}


def run_body(run_id: str, tiers: list[str], phases: list[dict[str, Any]], **run: Any) -> Any:
    return {
        "run": {"run_id": run_id, **run},
        "tiers": [
            {"tier_id": t, "tier_index": n, "name": f"tier {t}"} for n, t in enumerate(tiers)
        ],
        "phases": phases,
    }


async def start(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    answer = await client.post("/runs/start", json=body)
    assert answer.status_code == 201, answer.text
    run_id: str = body["run"]["run_id"]
    return run_id


async def wait_run(settings_db: Database, run_id: str, *states: str, seconds: float = 60) -> Run:
    deadline = time.monotonic() + seconds
    while True:
        async with settings_db.session() as session:
            run = await session.get(Run, run_id)
        if run is not None and (run.state in states):
            return run
        assert time.monotonic() < deadline, f"run never reached {states}: {run}"
        await asyncio.sleep(0.1)


async def phases_of(api: Api, run_id: str) -> dict[str, RunPhase]:
    async with api.db.session() as session:
        rows = await session.exec(select(RunPhase).where(RunPhase.run_id == run_id))
        return {p.phase_id: p for p in rows}


async def events_of(api: Api, run_id: str) -> list[Event]:
    async with api.db.session() as session:
        rows = await session.exec(select(Event).where(Event.resource_id == run_id))
        return list(rows)


async def open_gate(api: Api, run_id: str, seconds: float = 60) -> GateRow:
    deadline = time.monotonic() + seconds
    while True:
        async with api.db.session() as session:
            gate = (
                await session.exec(
                    select(GateRow).where(GateRow.resource_id == run_id, GateRow.state == "open")
                )
            ).first()
        if gate is not None:
            return gate
        assert time.monotonic() < deadline, "no gate opened"
        await asyncio.sleep(0.1)


async def test_a_two_tier_run_builds_audits_and_succeeds(
    api: Api, admin: httpx.AsyncClient, client: Client
) -> None:
    body = run_body(
        "build-1",
        ["t1", "t2"],
        [
            phase(
                "p1",
                "t1",
                builder=cmd("printf 'hello\\n' > feature.txt; echo '{\"tokens_used\": 40}'"),
                auditor=cmd(f"grep -q hello feature.txt && {APPROVE}"),
            ),
            phase(
                "p2",
                "t2",
                builder=cmd("printf 'one\\ntwo\\n' > second.txt"),
                auditor=cmd("test -f feature.txt && test -f second.txt"),
            ),
        ],
    )
    answer = await admin.post("/runs/start", json=body)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["id"] == "build-1" and made["state"] == "RUN_CREATED"
    assert [p["state"] for p in made["phases"]] == ["QUEUED", "QUEUED"]
    run = await wait_run(api.db, "build-1", "DONE_SUCCESS", "DONE_FAILED_REQUIRES_HUMAN_REVIEW")
    assert run.state == "DONE_SUCCESS", run.error
    assert run.tokens_used == 50 and run.completed_at is not None
    phases = await phases_of(api, "build-1")
    assert {p.state for p in phases.values()} == {"COMPLETE"}
    assert phases["p1"].files_changed == ["feature.txt"] and phases["p1"].lines_added == 1
    assert phases["p2"].files_changed == ["second.txt"] and phases["p2"].lines_added == 2
    built = [e for e in await events_of(api, "build-1") if e.type == "builder_finished"]
    patch = api.settings.artifacts_dir / built[0].payload["patch_path"]
    assert "+hello" in patch.read_text()
    # The row ends in the workflow's last activity, a moment before the workflow does.
    handle = client.get_workflow_handle("build-1")
    await handle.result()
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    history = await handle.fetch_history()
    await REPLAYER.replay_workflow(history)
    if os.environ.get("PILOTHOUSE_RECORD_HISTORIES"):
        recorded = History(events=history.events).SerializeToString()
        (HISTORIES / "run_two_tiers.pb").write_bytes(recorded)
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    # A workspace with nothing to clone is prepared locally, with no trip through the
    # queues; a phase's builder and auditor commands run in one activity.
    assert "workspaces.prepare" not in scheduled and "steps.run" not in scheduled
    assert scheduled.count("steps.run_series") == 2
    progress = (await admin.get("/runs/build-1/progress")).json()
    assert (progress["state"], progress["tokens_used"], progress["phases_completed"]) == (
        "DONE_SUCCESS",
        50,
        2,
    )
    usage = (await admin.get("/dashboard/usage", params={"period": "day"})).json()
    assert [p["total_tokens"] for p in usage["providers"]] == [50]
    index = (await admin.get("/runs/build-1/artifacts/index")).json()
    assert any(a["path"].endswith(".patch") for a in index["artifacts"])


async def test_start_refuses_what_cannot_run(api: Api, admin: httpx.AsyncClient) -> None:
    orphan = run_body("bad-1", ["t1"], [phase("p1", "nope")])
    answer = await admin.post("/runs/start", json=orphan)
    assert answer.status_code == 422 and "phases.0.tier_id" in answer.json()["detail"]
    typo = run_body("bad-2", ["t1"], [phase("p1", "t1", auditr=cmd("true"))])
    answer = await admin.post("/runs/start", json=typo)
    assert answer.status_code == 422 and "did you mean `auditor`?" in answer.json()["detail"]
    command = run_body("bad-4", ["t1"], [phase("p1", "t1")], repository="ext::sh -c x")
    answer = await admin.post("/runs/start", json=command)
    assert answer.status_code == 422 and "run.repository" in answer.json()["detail"]
    too_many = run_body("bad-3", ["t1"], [phase(f"p{n}", "t1", n) for n in range(3)], max_phases=2)
    assert (await admin.post("/runs/start", json=too_many)).status_code == 422
    async with api.db.session() as session:
        assert list(await session.exec(select(Run))) == []


async def test_a_run_may_not_name_pilothouses_own_paths(api: Api, admin: httpx.AsyncClient) -> None:
    """A test of its own: each refused start counts against the 10 a minute."""
    # What another token fetched, or an agent works on, is not a run's to clone or build in.
    data = api.settings.data_dir
    for field, path in (
        ("repository", f"file://{data}/mirrors/x.git"),
        # git ignores a file:// URL's host and decodes its %-escapes: so does the check.
        ("repository", f"file://localhost{data}/mirrors/x.git"),
        ("repository", f"file://{data}/%6Dirrors/x.git"),
        ("repository", f"file://[x{data}/mirrors/x.git"),  # no IPv6 host: urlsplit raises
        ("repository", f"{data}/workspaces/task-1"),
        ("workdir", f"{data}/mirrors/x.git"),
        ("workdir", f"{data}/workspaces/../workspaces/task-1"),
        # A tree that holds the data directory: a builder's diff would take in the database.
        ("workdir", str(data.parent)),
        ("workdir", "/"),
    ):
        ours = run_body("bad-5", ["t1"], [phase("p1", "t1")], **{field: path})
        answer = await admin.post("/runs/start", json=ours)
        assert answer.status_code == 422, (field, path, answer.text)
        assert answer.json()["error_code"] == "REPOSITORY_NOT_ALLOWED"
        assert f"run.{field}" in answer.json()["detail"]
    async with api.db.session() as session:
        assert list(await session.exec(select(Run))) == []


async def test_a_run_builds_in_the_workdir_it_names(
    api: Api, admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    run_git(tree, "init", "--quiet", "--initial-branch=main")
    (tree / "README.md").write_text("hello\n")
    run_git(tree, "add", "README.md")
    run_git(tree, "commit", "--quiet", "-m", "first")
    build = phase("p1", "t1", builder=cmd("echo more >> README.md"), auditor=cmd("true"))
    run_id = await start(admin, run_body("in-tree", ["t1"], [build], workdir=str(tree)))
    run = await wait_run(api.db, run_id, "DONE_SUCCESS", "DONE_FAILED_ENVIRONMENT")
    assert run.state == "DONE_SUCCESS", run.error
    assert (tree / "README.md").read_text() == "hello\nmore\n"
    assert (await phases_of(api, run_id))["p1"].files_changed == ["README.md"]
    # A directory that is no git work tree ends the run saying so; a relative one is refused.
    plain = tmp_path / "plain"
    plain.mkdir()
    run_id = await start(admin, run_body("no-tree", ["t1"], [build], workdir=str(plain)))
    run = await wait_run(api.db, run_id, "DONE_SUCCESS", "DONE_FAILED_ENVIRONMENT")
    assert run.state == "DONE_FAILED_ENVIRONMENT"
    assert (run.error or "").startswith("workspace: git rev-parse failed"), run.error
    relative = run_body("relative", ["t1"], [build], workdir="tree")
    answer = await admin.post("/runs/start", json=relative)
    assert answer.status_code == 422
    assert "run.workdir: an absolute path on the worker's host" in answer.json()["detail"]


async def test_a_run_that_cannot_start_or_is_paused_leaves_nothing_behind(api: Api) -> None:
    """Temporal refuses the start (its namespace is missing): the run, its tiers and
    phases, its first event and its key are taken back. The kill switch refuses first."""
    body = run_body("lost", ["t1", "t2"], [phase("p1", "t1"), phase("p2", "t2")])
    nowhere = api.settings.model_copy(update={"temporal_namespace": "no-such-namespace"})
    paused = api.settings.model_copy(update={"pause_new_work": True})
    for settings, error, detail in (
        (nowhere, "TEMPORAL_UNAVAILABLE", "could not start the run"),
        (paused, "NEW_WORK_PAUSED", "new work is paused"),
    ):
        async with (
            serve(settings) as base,
            httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {api.admin_token}"}
            ) as client,
        ):
            # Refused while paused, a start does not count against the limit of 10 a minute.
            for _ in range(1 if settings is nowhere else 11):
                answer = await client.post(
                    "/runs/start", json=body, headers={"Idempotency-Key": "k"}
                )
                assert (answer.status_code, answer.json()["error_code"]) == (503, error)
                assert answer.json()["detail"].startswith(detail)
    async with api.db.session() as session:
        for table in (Run, RunTier, RunPhase, Event, IdempotencyKey):
            assert list(await session.exec(select(table))) == [], table


async def test_a_duplicate_run_id_is_409_and_starts_are_rate_limited(
    api: Api, admin: httpx.AsyncClient
) -> None:
    body = run_body("dup", ["t1"], [phase("p1", "t1", builder=cmd("true"))])
    first = await admin.post("/runs/start", json=body)
    assert first.status_code == 201
    assert first.headers["X-RateLimit-Limit"] == "10"
    again = await admin.post("/runs/start", json=body)
    assert again.status_code == 409 and again.json()["error_code"] == "RUN_EXISTS"
    answers = [
        await admin.post("/runs/start", json=run_body(f"r{n}", ["t"], [phase("p", "t")]))
        for n in range(10)
    ]
    limited = answers[-1]
    assert limited.status_code == 429, [a.status_code for a in answers]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    for answer in answers:
        if answer.status_code == 201:
            await admin.post(f"/runs/{answer.json()['id']}/cancel")


async def test_an_outside_executor_posts_results_over_http(
    api: Api, admin: httpx.AsyncClient
) -> None:
    external = {"executor": "external", "timeout_seconds": 120}
    run_id = await start(
        admin,
        run_body("ext-1", ["t1"], [phase("p1", "t1", builder=external, auditor=external)]),
    )
    base = f"/runs/{run_id}/phases/p1"
    await wait_event(api, run_id, "builder_awaited")
    early = await admin.post(
        f"{base}/auditor_result",
        json={"phase_id": "p1", "run_id": run_id, "review_notes": "x", "recommendation": "approve"},
    )
    assert early.status_code == 409 and early.json()["error_code"] == "PHASE_NOT_AWAITING"
    status = await admin.post(f"{base}/update_status", json={"state": "CI_RUNNING"})
    assert status.status_code == 200 and status.json()["phase_state"] == "CI_RUNNING"
    issue = await admin.post(
        f"{base}/record_issue",
        params={"issue_key": "flaky", "severity": "minor", "source": "test", "category": "t"},
        json=["log.txt#12"],
    )
    assert issue.status_code == 200, issue.text
    assert issue.json()["phase_file"]["minor_issue_count"] == 1
    wrong = await admin.post(
        f"{base}/builder_result", json={"phase_id": "p9", "run_id": run_id, "status": "success"}
    )
    assert wrong.status_code == 422
    unknown = await admin.post(
        f"/runs/{run_id}/phases/p9/builder_result",
        json={"phase_id": "p9", "run_id": run_id, "status": "success"},
    )
    assert unknown.status_code == 404
    extra = await admin.post(
        f"{base}/builder_result",
        json={"phase_id": "p1", "run_id": run_id, "status": "success", "tokns_used": 3},
    )
    assert extra.status_code == 422
    built = await admin.post(
        f"{base}/builder_result",
        json={
            "phase_id": "p1",
            "run_id": run_id,
            "status": "success",
            "files_changed": ["a.py"],
            "lines_added": 3,
            "tokens_used": 1000,
        },
    )
    assert built.status_code == 200, built.text
    await wait_event(api, run_id, "auditor_awaited")
    audited = await admin.post(
        f"{base}/auditor_result",
        json={
            "phase_id": "p1",
            "run_id": run_id,
            "review_notes": "fine",
            "recommendation": "approve",
            "tokens_used": 200,
        },
    )
    assert audited.status_code == 200, audited.text
    run = await wait_run(api.db, run_id, "DONE_SUCCESS")
    assert run.tokens_used == 1200
    late = await admin.post(f"{base}/update_status", json={"state": "EXECUTING"})
    assert late.status_code == 409 and late.json()["error_code"] == "RUN_ENDED"
    # Temporal answers first; the database says why it refused.
    job_id = await create_job(admin, stage("a", gate=GATE))  # a running workflow, not a run
    for other in ("no-such-run", job_id):
        missing = await admin.post(
            f"/runs/{other}/phases/p1/update_status", json={"state": "EXECUTING"}
        )
        assert missing.status_code == 404, missing.text
        assert missing.json()["error_code"] == "RUN_NOT_FOUND"


async def wait_event(api: Api, run_id: str, kind: str, seconds: float = 60) -> Event:
    deadline = time.monotonic() + seconds
    while True:
        found = [e for e in await events_of(api, run_id) if e.type == kind]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {kind} event"
        await asyncio.sleep(0.1)


REVISE_ONCE = (
    'if [ "$PILOTHOUSE_ATTEMPT" -lt 2 ]; then '
    'echo \'{"recommendation": "revise", "issues_found": [{"issue_key": "k"}]}\'; '
    f"else {APPROVE}; fi"
)


async def test_revise_builds_again_then_fails_past_max_attempts(
    api: Api, admin: httpx.AsyncClient, client: Client
) -> None:
    run_id = await start(
        admin,
        run_body(
            "revise-1",
            ["t1"],
            [
                phase(
                    "p1",
                    "t1",
                    0,
                    builder=cmd('echo "$PILOTHOUSE_AUDITOR_ISSUES" >> seen.txt'),
                    auditor=cmd(REVISE_ONCE),
                ),
                phase(
                    "p2",
                    "t1",
                    1,
                    builder=cmd("true"),
                    auditor=cmd('echo \'{"recommendation": "revise"}\''),
                    max_attempts=2,
                ),
                phase("p3", "t1", 2, builder=cmd("true")),
            ],
        ),
    )
    run = await wait_run(api.db, run_id, "DONE_FAILED_REQUIRES_HUMAN_REVIEW", "DONE_SUCCESS")
    assert run.state == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    phases = await phases_of(api, run_id)
    assert phases["p1"].state == "COMPLETE" and phases["p1"].builder_attempts == 2
    assert phases["p2"].state == "FAILED" and "max_attempts" in (phases["p2"].error or "")
    assert phases["p3"].state == "SKIPPED"
    seen = (api.settings.data_dir / "workspaces" / run_id / "seen.txt").read_text()
    assert '"issue_key": "k"' in seen.splitlines()[1]
    # The row says how the run ended a moment before the workflow closes: wait for the close.
    handle = client.get_workflow_handle(run_id)
    deadline = time.monotonic() + 20
    while (described := await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert described.status == WorkflowExecutionStatus.FAILED


async def test_escalate_and_risky_patches_wait_for_a_human(
    api: Api, admin: httpx.AsyncClient
) -> None:
    run_id = await start(
        admin,
        run_body(
            "gates-1",
            ["t1"],
            [
                phase(
                    "esc",
                    "t1",
                    0,
                    builder=cmd("true"),
                    auditor=cmd('echo \'{"recommendation": "escalate"}\''),
                ),
                phase(
                    "big",
                    "t1",
                    1,
                    builder=cmd("seq 1 5 > big.txt"),
                    risk={"max_lines": 2},
                ),
                phase(
                    "secret",
                    "t1",
                    2,
                    builder=cmd("mkdir -p secrets && echo x > secrets/key"),
                    risk={"protected_paths": ["secrets/*"]},
                ),
            ],
        ),
    )
    escalated = await open_gate(api, run_id)
    assert escalated.stage == "esc" and "escalated" in escalated.config["why"]
    ok = await admin.post(f"/api/v1/approvals/{escalated.id}/decide", json={"outcome": "approve"})
    assert ok.status_code == 200, ok.text
    risky = await open_gate(api, run_id)
    assert risky.stage == "big" and "risk.max_lines" in risky.config["why"]
    await admin.post(f"/api/v1/approvals/{risky.id}/decide", json={"outcome": "approve"})
    protected = await open_gate(api, run_id)
    assert "secrets/key" in protected.config["why"]
    no = await admin.post(
        f"/api/v1/approvals/{protected.id}/decide",
        json={"outcome": "reject", "reason": "not the keys"},
    )
    assert no.status_code == 200
    run = await wait_run(api.db, run_id, "DONE_FAILED_REQUIRES_HUMAN_REVIEW")
    phases = await phases_of(api, run_id)
    assert [phases[p].state for p in ("esc", "big", "secret")] == ["COMPLETE", "COMPLETE", "FAILED"]
    assert "not the keys" in (run.error or "")


@pytest.mark.parametrize("outcome", ["approve", "reject"])
async def test_the_budget_gate(
    api: Api, admin: httpx.AsyncClient, outcome: str, tmp_path: Path
) -> None:
    spend = cmd("echo '{\"tokens_used\": 100}'")
    audits = tmp_path / "audits"
    # The builder and the auditor run in one activity; an auditor must still wait for the
    # budget gate that its builder's tokens opened.
    audit = cmd(f'echo "$PILOTHOUSE_PHASE_ID" >> {audits}')
    run_id = await start(
        admin,
        run_body(
            f"budget-{outcome}",
            ["t1"],
            [
                phase("p1", "t1", 0, builder=spend, auditor=audit),
                phase("p2", "t1", 1, builder=spend, auditor=audit),
            ],
            token_cap=50,
        ),
    )
    gate = await open_gate(api, run_id)
    assert gate.stage == "budget_exceeded" and "token_cap" in gate.config["why"]
    assert not audits.exists(), "the auditor ran past the budget"
    decision: dict[str, Any] = {"outcome": outcome}
    if outcome == "reject":
        decision["reason"] = "too expensive"
    assert (
        await admin.post(f"/api/v1/approvals/{gate.id}/decide", json=decision)
    ).status_code == 200
    if outcome == "approve":
        run = await wait_run(api.db, run_id, "DONE_SUCCESS")
        assert run.tokens_used == 200
        assert audits.read_text().split() == ["p1", "p2"]
    else:
        await wait_run(api.db, run_id, "DONE_FAILED_BUDGET_EXHAUSTED")
        assert not audits.exists()


async def test_a_parallel_phase_meets_the_budget_that_the_others_spent(
    api: Api, admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Phases running at once spend one budget: a builder that passes the cap after
    another phase spent part of it waits at the budget gate before its auditor runs."""
    audits = tmp_path / "audits"
    audit = cmd(f'echo "$PILOTHOUSE_PHASE_ID" >> {audits}')
    spend = "echo '{\"tokens_used\": 100}'"
    body = run_body(
        "budget-parallel",
        ["t1"],
        [
            phase("a", "t1", 0, builder=cmd(spend), auditor=audit),
            phase("b", "t1", 1, builder=cmd(f"sleep 2; {spend}"), auditor=audit),
        ],
        token_cap=150,
    )
    body["tiers"][0]["parallel"] = True
    run_id = await start(admin, body)
    gate = await open_gate(api, run_id)
    assert gate.stage == "budget_exceeded"
    answer = await admin.post(
        f"/api/v1/approvals/{gate.id}/decide", json={"outcome": "reject", "reason": "enough"}
    )
    assert answer.status_code == 200, answer.text
    await wait_run(api.db, run_id, "DONE_FAILED_BUDGET_EXHAUSTED")
    assert audits.read_text().split() == ["a"]


async def test_cancel_stops_a_run_and_closes_its_gates(api: Api, admin: httpx.AsyncClient) -> None:
    run_id = await start(
        admin,
        run_body(
            "cancel-1",
            ["t1"],
            [phase("p1", "t1", builder=cmd("true"), gate={"required": True})],
        ),
    )
    gate = await open_gate(api, run_id)
    answer = await admin.post(f"/runs/{run_id}/cancel")
    assert answer.status_code == 200, answer.text
    await wait_run(api.db, run_id, "DONE_CANCELED")
    async with api.db.session() as session:
        closed = await session.get(GateRow, gate.id)
    assert closed is not None and closed.state == "canceled"
    again = await admin.post(f"/runs/{run_id}/cancel")
    assert again.status_code == 409


async def test_cancel_stops_an_auditor_that_runs_with_its_builder(
    api: Api, admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    mark = tmp_path / "auditing"
    body = run_body(
        "cancel-audit",
        ["t1"],
        [phase("p1", "t1", builder=cmd("true"), auditor=cmd(f"touch {mark}; sleep 60"))],
    )
    run_id = await start(admin, body)
    deadline = time.monotonic() + 30
    while not mark.exists():
        assert time.monotonic() < deadline, "the auditor never started"
        await asyncio.sleep(0.05)
    canceled = time.monotonic()
    assert (await admin.post(f"/runs/{run_id}/cancel")).status_code == 200
    await wait_run(api.db, run_id, "DONE_CANCELED", seconds=20)
    # The heartbeat carries the cancel to the step: well before the auditor's own 60 s.
    assert time.monotonic() - canceled < 15
    ends = {(e.stage, e.status) for e in await events_of(api, run_id) if e.type == "step_finished"}
    assert ends == {("p1.builder", "succeeded"), ("p1.auditor", "canceled")}


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """An HTTP address that takes one connection and never answers: a clone from it hangs.
    Its events: the client connected; the client hung up (the clone was stopped)."""
    listener = socket.create_server(("127.0.0.1", 0))
    connected, hung_up = threading.Event(), threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn = listener.accept()[0]
            held.append(conn)
            connected.set()
            while conn.recv(4096):
                pass
        hung_up.set()

    waiter = threading.Thread(target=accept, daemon=True)
    waiter.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow.git", connected, hung_up
    finally:
        # Wakes an accept() still waiting: close() alone would not.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        waiter.join(5)
        for conn in held:
            conn.close()


async def test_a_run_canceled_while_it_clones_ends_canceled(
    api: Api, admin: httpx.AsyncClient
) -> None:
    with silent_server() as (url, connected, hung_up):
        body = run_body("cancel-clone", ["t1"], [phase("p1", "t1", builder=cmd("true"))])
        body["run"]["repository"] = url
        run_id = await start(admin, body)
        assert await asyncio.to_thread(connected.wait, 30), "the clone never began"
        # Past the clone's first heartbeat, which the SDK sends at once; it holds back the
        # later ones of an activity without a heartbeat timeout.
        await asyncio.sleep(3)
        answer = await admin.post(f"/runs/{run_id}/cancel")
        assert answer.status_code == 200, answer.text
        run = await wait_run(api.db, run_id, "DONE_CANCELED", "DONE_FAILED_ENVIRONMENT")
        # The cancel reaches the clone itself within seconds (its next heartbeat), not
        # after the SDK's default 30 s between heartbeats of an activity without a timeout.
        assert await asyncio.to_thread(hung_up.wait, 8), "the clone went on after the cancel"
    assert run.state == "DONE_CANCELED", run.error
    assert "run_done_canceled" in [e.type for e in await events_of(api, run_id)]


async def test_a_parallel_tier_runs_its_phases_at_once(api: Api, admin: httpx.AsyncClient) -> None:
    # Each builder waits for the other's mark: only phases that run at once both finish.
    meet = "touch {me}; for i in $(seq 600); do [ -e {other} ] && exit 0; sleep 0.1; done; exit 1"
    body = run_body(
        "parallel-1",
        ["t1"],
        [
            phase("a", "t1", 0, builder=cmd(meet.format(me="a.mark", other="b.mark"))),
            phase("b", "t1", 1, builder=cmd(meet.format(me="b.mark", other="a.mark"))),
        ],
    )
    body["tiers"][0]["parallel"] = True
    run_id = await start(admin, body)
    run = await wait_run(api.db, run_id, "DONE_SUCCESS", "DONE_FAILED_REQUIRES_HUMAN_REVIEW")
    assert run.state == "DONE_SUCCESS", run.error
    # Facts deferred while both phases ran are written once, not by each phase's activity.
    kinds = [(e.type, e.stage) for e in await events_of(api, run_id)]
    for once in ("tier_started", "builder_finished", "phase_completed", "tier_completed"):
        found = [k for k in kinds if k[0] == once]
        assert len(found) == len(set(found)), (once, kinds)


async def test_a_taken_run_id_is_409_with_or_without_a_key(admin: httpx.AsyncClient) -> None:
    body = run_body("taken", ["t1"], [phase("p1", "t1", builder=cmd("true"))])
    first = await admin.post("/runs/start", json=body, headers={"Idempotency-Key": "one"})
    assert first.status_code == 201
    replay = await admin.post("/runs/start", json=body, headers={"Idempotency-Key": "one"})
    assert replay.status_code == 201 and replay.json()["id"] == "taken"
    other = await admin.post("/runs/start", json=body, headers={"Idempotency-Key": "two"})
    assert other.status_code == 409 and other.json()["error_code"] == "RUN_EXISTS"


async def test_short_steps_fail_and_revise_as_any_step(
    api: Api, admin: httpx.AsyncClient, client: Client
) -> None:
    """Steps that declare a short timeout run as local activities: a failing one is read as
    a failing ordinary one is (an auditor's exit asks for a revision; a builder's fails)."""
    short = {"timeout_seconds": 10}
    body = run_body(
        "short-fail",
        ["t1"],
        [
            phase(
                "p1",
                "t1",
                0,
                builder=cmd("true") | short,
                auditor=cmd('[ "$PILOTHOUSE_ATTEMPT" -ge 2 ]') | short,
            ),
            phase("p2", "t1", 1, builder=cmd("echo broke; exit 3") | short),
        ],
    )
    run_id = await start(admin, body)
    run = await wait_run(
        api.db,
        run_id,
        "DONE_FAILED_REQUIRES_HUMAN_REVIEW",
        "DONE_SUCCESS",
        "DONE_FAILED_ENVIRONMENT",
    )
    handle = client.get_workflow_handle(run_id)
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    history = await handle.fetch_history()
    await REPLAYER.replay_workflow(history)
    if os.environ.get("PILOTHOUSE_RECORD_HISTORIES"):
        recorded = History(events=history.events).SerializeToString()
        (HISTORIES / "run_short_steps_fail.pb").write_bytes(recorded)
    phases = await phases_of(api, run_id)
    assert phases["p1"].state == "COMPLETE" and phases["p1"].builder_attempts == 2, run.error
    assert phases["p2"].state == "FAILED", run.error
    assert phases["p2"].error == "the builder exited with status 3: broke"
    assert run.state == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"


async def test_a_failing_builder_fails_its_phase_saying_why(
    api: Api, admin: httpx.AsyncClient
) -> None:
    failing = run_body("fail-1", ["t1"], [phase("p1", "t1", builder=cmd("echo broke; exit 3"))])
    run_id = await start(admin, failing)
    run = await wait_run(api.db, run_id, "DONE_FAILED_REQUIRES_HUMAN_REVIEW", "DONE_SUCCESS")
    assert run.state == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    p1 = (await phases_of(api, run_id))["p1"]
    assert p1.state == "FAILED" and p1.error == "the builder exited with status 3: broke"


@pytest.mark.parametrize(
    ("late", "auditor"),
    [("builder", True), ("builder", False), ("auditor", True)],
    ids=["builder-with-auditor", "builder-alone", "auditor"],
)
async def test_a_step_that_times_out_failed_whatever_it_exits_with(
    api: Api, admin: httpx.AsyncClient, late: str, auditor: bool
) -> None:
    """A command stopped at its timeout that exits 0 on SIGTERM did not succeed: a builder
    fails its phase, an auditor asks for a revision. With an auditor command, the builder
    and auditor run as one series; alone, the builder is a step of its own."""
    stubborn = cmd("trap 'exit 0' TERM; sleep 30 & wait") | {"timeout_seconds": 1}
    steps: dict[str, Any] = {"builder": cmd("true")}
    if auditor:
        steps["auditor"] = cmd("true")
    steps[late] = stubborn
    body = run_body(
        f"stubborn-{late}-{auditor}", ["t1"], [phase("p1", "t1", max_attempts=1, **steps)]
    )
    run_id = await start(admin, body)
    run = await wait_run(api.db, run_id, "DONE_FAILED_REQUIRES_HUMAN_REVIEW", "DONE_SUCCESS")
    assert run.state == "DONE_FAILED_REQUIRES_HUMAN_REVIEW", run.error
    p1 = (await phases_of(api, run_id))["p1"]
    assert p1.state == "FAILED"
    if late == "builder":
        assert "timed out" in (p1.error or ""), p1.error
    else:
        assert "revisions 1 times" in (p1.error or ""), p1.error
        [audit] = [e for e in await events_of(api, run_id) if e.type == "auditor_finished"]
        assert audit.payload["recommendation"] == "revise"
        assert "timed out" in audit.payload["review_notes"]
