"""The read side of runs and the dashboard, over rows put straight into the database: lists
and counts, one run, progress, errors, issues, files (and every way to climb out of a run's
directory), usage, model overrides, human notes and the consolidated-metrics kill switch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from store.models import Event, Run, RunIssue, RunPhase, RunTier, utcnow
from store.tokens import Scope
from tests.conftest import Api, make_token, serve

SECRET = "TOP-SECRET-MARKER-4f1c"


async def add_run(
    api: Api,
    run_id: str,
    phases: Sequence[tuple[str, str]] = (),
    *,
    created_at: datetime | None = None,
    **fields: Any,
) -> None:
    """A run of one tier `t1` whose phases are `(phase_id, state)`, indexed in order."""
    async with api.db.session() as session:
        session.add(
            Run(
                id=run_id, workdir="/tmp", owner="test", created_at=created_at or utcnow(), **fields
            )
        )
        session.add(RunTier(run_id=run_id, tier_id="t1", tier_index=0, name="core"))
        for index, (phase_id, state) in enumerate(phases):
            session.add(
                RunPhase(
                    run_id=run_id,
                    phase_id=phase_id,
                    phase_index=index,
                    tier_id="t1",
                    name=f"phase {phase_id}",
                    state=state,
                    tokens_used=10 * index,
                )
            )
        await session.commit()


async def add(api: Api, *rows: Any) -> None:
    async with api.db.session() as session:
        session.add_all(rows)
        await session.commit()


def event(run_id: str, type: str, **fields: Any) -> Event:
    return Event(resource_kind="run", resource_id=run_id, type=type, **fields)


async def test_the_list_pages_newest_first_with_counts(admin: httpx.AsyncClient, api: Api) -> None:
    now = utcnow()
    await add_run(api, "old", [("a", "COMPLETE")], created_at=now - timedelta(hours=2))
    await add_run(
        api,
        "mid",
        [("a", "COMPLETE"), ("b", "SKIPPED"), ("c", "EXECUTING"), ("d", "QUEUED")],
        created_at=now - timedelta(hours=1),
        tokens_used=42,
        token_cap=1000,
    )
    await add_run(api, "new", created_at=now)

    first = (await admin.get("/runs", params={"limit": 2})).json()
    assert first["total"] == 3 and first["limit"] == 2 and first["offset"] == 0
    assert [r["id"] for r in first["runs"]] == ["new", "mid"]
    mid = first["runs"][1]
    assert mid["phases_total"] == 4 and mid["phases_completed"] == 1
    assert mid["current_phase_name"] == "phase c"
    assert (mid["tokens_used"], mid["token_cap"], mid["state"]) == (42, 1000, "RUN_CREATED")
    assert first["runs"][0]["phases_total"] == 0 and first["runs"][0]["current_phase_name"] is None

    rest = (await admin.get("/runs", params={"limit": 2, "offset": 2})).json()
    assert [r["id"] for r in rest["runs"]] == ["old"]
    assert rest["runs"][0]["current_phase_name"] is None
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"offest": 1}):
        answer = await admin.get("/runs", params=bad)
        assert answer.status_code == 422, bad
        assert answer.json()["error_code"] == "VALIDATION_ERROR"


async def test_one_run_has_its_tiers_and_phases(admin: httpx.AsyncClient, api: Api) -> None:
    await add_run(api, "r1", [("p1", "COMPLETE"), ("p2", "QUEUED")], token_cap=500)
    run = (await admin.get("/runs/r1")).json()
    assert (run["id"], run["state"], run["token_cap"]) == ("r1", "RUN_CREATED", 500)
    assert [p["phase_id"] for p in run["phases"]] == ["p1", "p2"]
    assert [t["tier_id"] for t in run["tiers"]] == ["t1"]
    assert [p["phase_id"] for p in run["tiers"][0]["phases"]] == ["p1", "p2"]
    missing = await admin.get("/runs/nope")
    assert missing.status_code == 404 and missing.json()["error_code"] == "RUN_NOT_FOUND"


async def test_progress_counts_phases_and_time(admin: httpx.AsyncClient, api: Api) -> None:
    started = utcnow() - timedelta(hours=1)
    await add_run(
        api,
        "r1",
        [("p1", "COMPLETE"), ("p2", "EXECUTING"), ("p3", "QUEUED"), ("p4", "QUEUED")],
        started_at=started,
        completed_at=started + timedelta(seconds=300),
        tokens_used=7,
    )
    progress = (await admin.get("/runs/r1/progress")).json()
    assert progress["elapsed_seconds"] == 300
    assert (progress["tokens_used"], progress["token_cap"]) == (7, 5_000_000)
    assert progress["phases_total"] == 4 and progress["phases_completed"] == 1
    assert progress["phases_in_progress"] == 1 and progress["phases_pending"] == 2
    assert progress["phases"][1] == {
        "phase_id": "p2",
        "name": "phase p2",
        "state": "EXECUTING",
        "phase_index": 1,
        "tokens_used": 10,
        "builder_attempts": 0,
    }
    assert (await admin.get("/runs/nope/progress")).status_code == 404


async def test_errors_come_from_the_event_log(admin: httpx.AsyncClient, api: Api) -> None:
    await add_run(api, "r1")
    await add_run(api, "r2")
    await add(
        api,
        event("r1", "phase_failed", stage="p1", message="p1: failed: auditor said no"),
        event("r1", "step_finished", stage="p1", status="failed", message="exit 1"),
        event("r1", "step_finished", stage="p1", status="succeeded", message="exit 0"),
        event("r1", "step_finished", stage="p2", status="timed_out", message="too slow"),
        event("r1", "run_done_failed", status="DONE_FAILED_REQUIRES_HUMAN_REVIEW", message="end"),
        event("r1", "phase_state", stage="p3", status="FAILED", message="p3 failed"),
        event("r1", "tokens_used", payload={"tokens_used": 5}),
        event("r1", "failedness", message="not an error: the name only starts with failed"),
        event("r2", "phase_failed", stage="p1", message="another run's"),
    )
    errors = (await admin.get("/runs/r1/errors")).json()
    assert errors["run_id"] == "r1" and errors["error_count"] == 5
    assert [e["message"] for e in errors["errors"]] == [
        "p1: failed: auditor said no",
        "exit 1",
        "too slow",
        "end",
        "p3 failed",
    ]
    first = errors["errors"][0]
    assert first["phase_id"] == "p1" and first["type"] == "phase_failed"
    assert first["ts"].endswith("Z") and isinstance(first["event_id"], int)

    summary = (await admin.get("/runs/r1/errors/summary")).json()["summary"]
    assert summary["total"] == 5
    assert summary["by_phase"] == {"p1": 2, "p2": 1, "p3": 1, "run": 1}
    assert summary["by_type"] == {
        "phase_failed": 1,
        "step_finished": 2,
        "run_done_failed": 1,
        "phase_state": 1,
    }
    assert (await admin.get("/runs/nope/errors")).status_code == 404
    assert (await admin.get("/runs/nope/errors/summary")).status_code == 404


def issue(run_id: str, phase_id: str, index: int, key: str, **fields: Any) -> RunIssue:
    defaults: dict[str, Any] = {"severity": "minor", "source": "test", "category": "lint"}
    if "created_at" in fields:
        defaults["updated_at"] = fields["created_at"]
    return RunIssue(
        run_id=run_id,
        tier_id=f"tier-{index // 2}",
        phase_id=phase_id,
        phase_index=index,
        issue_key=key,
        **{**defaults, **fields},
    )


async def test_issue_index_and_backlog(admin: httpx.AsyncClient, api: Api) -> None:
    for run_id in ("r1", "r2", "r3"):
        await add_run(api, run_id)
    t0 = utcnow() - timedelta(hours=3)
    await add(
        api,
        issue("r1", "p1", 1, "flaky", created_at=t0),
        issue("r1", "p3", 3, "flaky", severity="major", occurrence_count=2, created_at=t0),
        issue("r1", "p1", 1, "typo", category="docs", created_at=t0),
        issue("r2", "p1", 1, "flaky", created_at=t0 + timedelta(hours=1)),
        issue("r3", "p2", 2, "flaky", created_at=t0 + timedelta(hours=2)),
    )
    index = (await admin.get("/runs/r1/issues/index")).json()
    assert index["run_id"] == "r1"
    assert index["issues_by_key"]["flaky"] == {
        "category": "lint",
        "severity": "major",
        "effective_severity": "major",
        "first_phase_index": 1,
        "last_phase_index": 3,
        "occurrence_count": 3,
        "seen_in_tiers": ["tier-0", "tier-1"],
        "seen_in_phases": ["p1", "p3"],
    }
    assert index["issues_by_key"]["typo"]["category"] == "docs"
    assert (await admin.get("/runs/r2/issues/index")).json()["issues_by_key"].keys() == {"flaky"}
    assert (await admin.get("/runs/nope/issues/index")).status_code == 404

    backlog = (await admin.get("/project/issues/backlog")).json()["issues_by_key"]
    flaky = backlog["flaky"]
    assert flaky["base_severity"] == "major" and flaky["age_in_runs"] == 3
    assert flaky["age_in_tiers"] == 4  # (r1, tier-0), (r1, tier-1), (r2, tier-0), (r3, tier-1)
    assert flaky["first_seen_run_id"] == "r1" and flaky["last_seen_run_id"] == "r3"
    assert flaky["status"] == "needs_cleanup" and flaky["seen_in_tiers"] == ["tier-0", "tier-1"]
    assert backlog["typo"]["status"] == "open" and backlog["typo"]["age_in_runs"] == 1


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


async def test_artifacts_are_listed_from_the_run_directory(
    admin: httpx.AsyncClient, api: Api
) -> None:
    await add_run(api, "r1")
    await add_run(api, "empty")
    root = api.settings.artifacts_dir / "r1"
    write(root / "build-1.log", "hello")
    write(root / "patches" / "build-1.patch", "diff")
    write(root / "shots" / "home.PNG", b"\x89PNG")
    write(root / "shots" / "page.html", "<p>hi</p>")
    write(root / ".build.pgid", "123")  # Pilothouse's own bookkeeping: not an artifact
    (root / "outside.log").symlink_to(write(api.settings.data_dir / "secret.txt", SECRET))

    index = (await admin.get("/runs/r1/artifacts/index")).json()
    paths = {a["path"]: a["size_bytes"] for a in index["artifacts"]}
    assert paths == {
        "build-1.log": 5,
        "patches/build-1.patch": 4,
        "shots/home.PNG": 4,
        "shots/page.html": 9,
    }
    assert index["total_size_bytes"] == 22 and index["truncated"] is False
    assert all(a["modified_at"].endswith("Z") for a in index["artifacts"])
    assert (await admin.get("/runs/empty/artifacts/index")).json()["artifacts"] == []
    assert (await admin.get("/runs/nope/artifacts/index")).status_code == 404

    browser = (await admin.get("/runs/r1/browser/artifacts")).json()
    assert browser["total_count"] == 2
    assert {(a["path"], a["type"]) for a in browser["artifacts"]} == {
        ("shots/home.PNG", "screenshot"),
        ("shots/page.html", "html"),
    }
    assert (await admin.get("/runs/nope/browser/artifacts")).status_code == 404


async def test_a_file_is_read_as_text_and_capped(admin: httpx.AsyncClient, api: Api) -> None:
    await add_run(api, "r1")
    root = api.settings.artifacts_dir / "r1"
    write(root / "logs" / "build.log", "built ✓\n")
    write(root / "big.log", b"x" * (1024 * 1024 + 10))

    answer = await admin.get("/runs/r1/artifacts/file", params={"path": "logs/build.log"})
    assert answer.status_code == 200 and answer.text == "built ✓\n"
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["x-artifact-truncated"] == "false"
    assert answer.headers["x-artifact-redacted"] == "false"
    assert answer.headers["x-artifact-original-size"] == str(len("built ✓\n".encode()))
    # Encoded once or twice, a plain path is the same file.
    for encoded in ("logs%2Fbuild.log", "logs%252Fbuild.log"):
        again = await admin.get("/runs/r1/artifacts/file", params={"path": encoded})
        assert again.text == "built ✓\n"

    big = await admin.get("/runs/r1/artifacts/file", params={"path": "big.log"})
    assert big.headers["x-artifact-truncated"] == "true"
    assert big.headers["x-artifact-original-size"] == str(1024 * 1024 + 10)
    assert big.text.startswith("x" * 1024 * 1024)
    assert big.text.endswith("[TRUNCATED: File size 1048586 bytes exceeds cap of 1048576 bytes]")

    for path, status in (("nope.log", 404), ("logs", 404)):
        answer = await admin.get("/runs/r1/artifacts/file", params={"path": path})
        assert answer.status_code == status and answer.json()["error_code"] == "ARTIFACT_NOT_FOUND"
    missing_run = await admin.get("/runs/nope/artifacts/file", params={"path": "a.log"})
    assert missing_run.status_code == 404 and missing_run.json()["error_code"] == "RUN_NOT_FOUND"
    bearer = "Authorization: Bearer abcdefghijklmnopqrstu"
    write(root / "env.log", f"login ok\npassword=hunter2hunter\n{bearer}\n")
    plain = await admin.get("/runs/r1/artifacts/file", params={"path": "env.log"})
    assert "hunter2hunter" in plain.text and plain.headers["x-artifact-redacted"] == "false"
    hidden = await admin.get("/runs/r1/artifacts/file", params={"path": "env.log", "redact": True})
    assert hidden.text == "login ok\npassword=[REDACTED]\nAuthorization: Bearer [REDACTED]\n"
    assert hidden.headers["x-artifact-redacted"] == "true"
    assert hidden.headers["x-artifact-redaction-count"] == "2"


TRAVERSALS = [
    "..",
    "../x",
    "../../secret.txt",
    "a/../../x",
    "logs/../../../secret.txt",
    "../other/secret.txt",
    "/etc/passwd",
    "%2e%2e/%2e%2e/secret.txt",
    "%252e%252e/%252e%252e/secret.txt",
    "..%2f..%2fsecret.txt",
    "..%252f..%252fsecret.txt",
    "%2fetc%2fpasswd",
    "%252fetc%252fpasswd",
    "..\\..\\secret.txt",
    "\\etc\\passwd",
    "..%5c..%5csecret.txt",
    "C:\\x",
    "c:/x",
    "C:secret.txt",
    "./logs/build.log",
    ".",
    "a//b",
    "logs/",
    "",
    "%00",
    "logs/build.log%00.txt",
    "%2500",
    "~/secret.txt",
    "link.txt",
    "linkdir/secret.txt",
    "linkdir/artifacts/other/secret.txt",
    "otherlink/secret.txt",
    "loop",
    "loop/secret.txt",
    "logs/build.log/..",
]


async def test_no_path_leads_out_of_the_run_directory(admin: httpx.AsyncClient, api: Api) -> None:
    await add_run(api, "r1")
    await add_run(api, "outrun")
    data = api.settings.data_dir.resolve()
    root = api.settings.artifacts_dir / "r1"
    write(root / "logs" / "build.log", "mine")
    secret = write(data / "secret.txt", SECRET)
    write(api.settings.artifacts_dir / "other" / "secret.txt", SECRET)  # another run's files
    (root / "link.txt").symlink_to(secret)  # a file symlink pointing out
    (root / "linkdir").symlink_to(data, target_is_directory=True)  # a directory pointing out
    (root / "otherlink").symlink_to(api.settings.artifacts_dir / "other")
    (root / "loop").symlink_to(root / "loop")  # resolves to nothing at all
    # A run whose whole directory is a symlink to somewhere else is treated as having none.
    (api.settings.artifacts_dir / "outrun").symlink_to(data, target_is_directory=True)

    cases = [*TRAVERSALS, str(secret), str(secret).lstrip("/")]
    for path in cases:
        answer = await admin.get("/runs/r1/artifacts/file", params={"path": path})
        assert answer.status_code in (400, 404), (path, answer.status_code)
        assert SECRET not in answer.text, path
        assert answer.json()["error_code"] in ("INVALID_ARTIFACT_PATH", "ARTIFACT_NOT_FOUND")
    refused = await admin.get("/runs/r1/artifacts/file", params={"path": "../x"})
    assert refused.status_code == 400 and "query.path" in refused.json()["detail"]
    for path in ("secret.txt", "../secret.txt"):
        answer = await admin.get("/runs/outrun/artifacts/file", params={"path": path})
        assert answer.status_code in (400, 404) and SECRET not in answer.text
    index = (await admin.get("/runs/outrun/artifacts/index")).json()
    assert index["artifacts"] == []
    # A NUL byte in the URL itself is refused by every route before it is read: 422.
    raw = await admin.get("/runs/r1/artifacts/file?path=logs/build.log%00")
    assert raw.status_code == 422 and SECRET not in raw.text
    listing = (await admin.get("/runs/r1/artifacts/index")).text
    assert "secret" not in listing and "link" not in listing


async def test_dashboard_status(admin: httpx.AsyncClient, api: Api) -> None:
    await add_run(
        api,
        "r1",
        [("p1", "COMPLETE"), ("p2", "COMPLETE"), ("p3", "EXECUTING"), ("p4", "QUEUED")],
        tokens_used=250,
        token_cap=1000,
    )
    status = (await admin.get("/dashboard/runs/r1/status")).json()
    assert status["run_id"] == "r1" and status["state"] == "RUN_CREATED"
    assert status["phases_by_state"] == {"COMPLETE": 2, "EXECUTING": 1, "QUEUED": 1}
    assert status["current_phase_name"] == "phase p3" and status["current_tier_name"] == "core"
    assert status["completed_phases"] == 2 and status["percent_complete"] == 50.0
    assert status["token_utilization"] == 25.0 and status["total_tiers"] == 1
    assert (await admin.get("/dashboard/runs/nope/status")).status_code == 404


async def test_usage_by_period(admin: httpx.AsyncClient, api: Api) -> None:
    await add_run(api, "r1")
    now = utcnow()

    def spent(days: float, **payload: Any) -> Event:
        return event("r1", "tokens_used", payload=payload, created_at=now - timedelta(days=days))

    await add(
        api,
        spent(
            0,
            tokens_used=100,
            prompt_tokens=60,
            completion_tokens=40,
            provider="anthropic",
            model="claude",
        ),
        spent(0.1, tokens_used=10, provider="anthropic", model="claude"),
        spent(3, tokens_used=1000, provider="openai", model="gpt"),
        spent(20, tokens_used=5),
        spent(40, tokens_used=99999),
        event("r1", "step_finished", payload={"tokens_used": 7777}),
    )
    day = (await admin.get("/dashboard/usage", params={"period": "day"})).json()
    assert day["models"] == [
        {
            "provider": "anthropic",
            "model": "claude",
            "prompt_tokens": 60,
            "completion_tokens": 40,
            "total_tokens": 110,
        }
    ]
    assert day["providers"][0]["period"] == "day" and day["providers"][0]["cap_tokens"] == 5_000_000
    week = (await admin.get("/dashboard/usage")).json()
    assert {p["provider"]: p["total_tokens"] for p in week["providers"]} == {
        "anthropic": 110,
        "openai": 1000,
    }
    month = (await admin.get("/dashboard/usage", params={"period": "month"})).json()
    assert {(m["provider"], m["model"]): m["total_tokens"] for m in month["models"]} == {
        ("anthropic", "claude"): 110,
        ("openai", "gpt"): 1000,
        ("unknown", "unknown"): 5,
    }
    assert (await admin.get("/dashboard/usage", params={"period": "year"})).status_code == 422


async def test_model_overrides_global_and_per_run(admin: httpx.AsyncClient, api: Api) -> None:
    await add_run(api, "r1")
    assert (await admin.get("/dashboard/models")).json() == []
    first = await admin.post("/dashboard/models/override", json={"role": "builder", "model": "m1"})
    assert first.status_code == 200, first.text
    assert first.json()["scope"] == "global" and first.json()["category"] == "*"
    again = {"role": "builder", "model": "m2", "scope": "global"}
    assert (await admin.post("/dashboard/models/override", json=again)).status_code == 200
    per_run = {"role": "auditor", "model": "m3", "run_id": "r1", "complexity": "high"}
    answer = await admin.post("/dashboard/models/override", json=per_run)
    assert answer.json()["scope"] == "run" and answer.json()["run_id"] == "r1"

    mappings = (await admin.get("/dashboard/models")).json()
    assert [(m["role"], m["model"], m["scope"], m["run_id"]) for m in mappings] == [
        ("builder", "m2", "global", None),
        ("auditor", "m3", "run", "r1"),
    ]
    other = (await admin.get("/dashboard/models", params={"run_id": "r2"})).json()
    assert [m["model"] for m in other] == ["m2"]

    for bad in (
        {"role": "builder", "model": "m", "modle": "x"},
        {"role": "painter", "model": "m"},
        {"role": "builder", "model": "m", "scope": "run"},
        {"role": "builder", "model": "m", "scope": "global", "run_id": "r1"},
        {"role": "builder", "model": "m", "category": "has space"},
        {"role": "builder", "model": ""},
    ):
        refused = await admin.post("/dashboard/models/override", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    unknown = {"role": "builder", "model": "m", "run_id": "nope"}
    assert (await admin.post("/dashboard/models/override", json=unknown)).status_code == 404


async def test_human_notes_go_to_the_file_and_the_run_log(
    admin: httpx.AsyncClient, api: Api
) -> None:
    await add_run(api, "r1")
    answer = await admin.post("/dashboard/human-notes", json={"note": "looks odd", "run_id": "r1"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["timestamp"].endswith("Z")
    await admin.post("/dashboard/human-notes", json={"note": "general", "author": "ann"})
    notes = (api.settings.data_dir / "human_notes.md").read_text()
    assert "looks odd" in notes and "**Run:** r1" in notes and "**Author:** ann" in notes
    logged = (await admin.get("/runs/r1/events")).json()["items"]
    assert [(e["type"], e["message"]) for e in logged] == [("human_note", "looks odd")]
    assert logged[0]["payload"] == {"author": "admin"}

    for bad in ({"note": ""}, {"note": "x", "runid": "r1"}, {"note": "a\u0000b"}, {}):
        assert (await admin.post("/dashboard/human-notes", json=bad)).status_code == 422, bad
    unknown = await admin.post("/dashboard/human-notes", json={"note": "x", "run_id": "nope"})
    assert unknown.status_code == 404


async def test_consolidated_metrics_behind_the_kill_switch(
    admin: httpx.AsyncClient, api: Api
) -> None:
    await add_run(api, "r1", [("p1", "COMPLETE"), ("p2", "QUEUED")], tokens_used=300)
    await add(
        api,
        event(
            "r1",
            "tokens_used",
            payload={"tokens_used": 300, "prompt_tokens": 200, "completion_tokens": 100},
        ),
    )
    off = await admin.get("/dashboard/runs/r1/consolidated-metrics")
    assert off.status_code == 503 and off.json()["error_code"] == "KILL_SWITCH_OFF"
    assert (await admin.get("/dashboard/runs/r1/consolidated-metrics?limit=0")).status_code == 503

    enabled = api.settings.model_copy(update={"enable_consolidated_metrics": True})
    async with (
        serve(enabled) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": api.admin_token}) as client,
    ):
        metrics = (await client.get("/dashboard/runs/r1/consolidated-metrics")).json()
        assert metrics["total_tokens_spent"] == 300
        assert (metrics["total_prompt_tokens"], metrics["total_completion_tokens"]) == (
            200,
            100,
        )
        assert metrics["artifact_tokens_avoided"] == 0 and metrics["ab_delta_tokens_saved"] == 0
        assert (metrics["total_phases"], metrics["completed_phases"]) == (2, 1)
        assert "does not measure" in metrics["note"]
        nope = await client.get("/dashboard/runs/nope/consolidated-metrics")
        assert nope.status_code == 404
        for bad in ("limit=10001", "limit=0", "offset=-1"):
            answer = await client.get(f"/dashboard/runs/r1/consolidated-metrics?{bad}")
            assert answer.status_code == 422, bad


@pytest.mark.parametrize("header", ["bearer", "x-api-key"])
async def test_reads_take_runs_read_and_writes_runs_write(api: Api, header: str) -> None:
    await add_run(api, "r1")
    reader = await make_token(api.db, f"reader-{header}", Scope.runs_read)
    jobs = await make_token(api.db, f"jobs-{header}", Scope.jobs_read)
    async with api.client(reader, header) as client:
        for path in ("/runs", "/runs/r1", "/runs/r1/progress", "/dashboard/usage"):
            assert (await client.get(path)).status_code == 200, path
        write = await client.post("/dashboard/human-notes", json={"note": "x"})
        assert write.status_code == 403 and write.json()["error_code"] == "INSUFFICIENT_SCOPE"
    async with api.client(jobs, header) as client:
        assert (await client.get("/runs")).status_code == 403
        assert (await client.get("/project/issues/backlog")).status_code == 403
