"""The agent adapter: a fake Claude Code speaking stream-json in a git work tree, its lines
read into events as they arrive, its result into usage and a session a follow-up resumes,
and its process group gone after the watchdog, the timeout, a cancel or a dead worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from activities.agents import AgentRunIn, AgentRunOut, Agents, render
from settings import Settings
from store.engine import Database
from store.models import Artifact, Event

FAKE = Path(__file__).with_name("fake_claude.py")
COMMAND = (
    f"{sys.executable} {FAKE} -p {{prompt}} --output-format stream-json --verbose "
    "--max-turns {max_turns} --model {model} --permission-mode {mode}"
)
ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def wait_for_lines(path: Path, count: int = 1, seconds: float = 20) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            return [int(line) for line in lines]
        assert time.monotonic() < deadline, f"{path} never had {count} lines"
        await asyncio.sleep(0.05)


@pytest.fixture
def agents(db: Database, settings: Settings) -> Agents:
    return Agents(db, settings)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    subprocess.run(["git", "init", "--quiet"], cwd=path, check=True)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The fake agent's transcripts and the pids it started."""
    return tmp_path / "claude-home"


def agent(workspace: Path, home: Path, prompt: str, **extra: Any) -> AgentRunIn:
    values: dict[str, Any] = {
        "resource_kind": "task",
        "resource_id": "task-test",
        "stage": "iteration-1",
        "cwd": str(workspace),
        "prompt": prompt,
        "command": COMMAND,
        "model": "m-test",
        "permission_mode": "acceptEdits",
        "timeout_seconds": 60,
        "idle_timeout_seconds": 30,
        "kill_grace_seconds": 0.5,
        "env": {"FAKE_CLAUDE_HOME": str(home)},
    }
    return AgentRunIn(**(values | extra))


async def all_events(db: Database, resource_id: str = "task-test") -> list[Event]:
    async with db.session() as session:
        query = select(Event).where(Event.resource_id == resource_id).order_by(col(Event.id))
        return list((await session.exec(query)).all())


async def log_of(db: Database, settings: Settings, out: AgentRunOut) -> str:
    async with db.session() as session:
        artifact = await session.get(Artifact, out.artifact_id)
    assert artifact is not None and artifact.kind == "log"
    return (settings.artifacts_dir / artifact.path).read_text()


async def test_each_line_becomes_an_event_in_order_and_the_result_gives_usage(
    agents: Agents, db: Database, settings: Settings, workspace: Path, home: Path
) -> None:
    out = await ActivityEnvironment().run(agents.run, agent(workspace, home, "note the plan"))
    assert out.outcome == "succeeded" and out.exit_code == 0 and out.error is None
    evs = await all_events(db)
    assert [e.type for e in evs] == [
        "stage_started",
        "agent.system",
        "agent.assistant",
        "agent.assistant",
        "agent.user",
        "agent.assistant",
        "agent.result",
        "step_finished",
    ]
    init, said, tool_use, tool_result, _, result = evs[1:7]
    assert init.message == f"init: model m-test, session {out.session_id}"
    assert init.payload["permissionMode"] == "acceptEdits"
    assert said.message == "I'll work on: note the plan"
    assert tool_use.message == f"tool_use Write: {workspace / 'NOTES.md'}"
    assert tool_use.payload["message"]["content"][0]["type"] == "tool_use"
    assert tool_result.message == "tool_result"
    assert result.status == "success" and result.message.startswith("result: success, 2 turns, $")
    # The result line as the agent printed it, and what the adapter read from it.
    lines = [json.loads(line) for line in (await log_of(db, settings, out)).splitlines()]
    assert [line["type"] for line in lines] == [e.type.removeprefix("agent.") for e in evs[1:7]]
    assert result.payload == lines[-1]
    printed = lines[-1]
    assert out.subtype == "success" and out.is_error is False
    assert out.result == "Done: note the plan"
    assert out.session_id == printed["session_id"] == lines[0]["session_id"]
    assert out.usage.model_dump() == {
        **{k: printed["usage"][k] for k in ("input_tokens", "output_tokens")},
        "cache_creation_input_tokens": printed["usage"]["cache_creation_input_tokens"],
        "cache_read_input_tokens": printed["usage"]["cache_read_input_tokens"],
        "total_cost_usd": printed["total_cost_usd"],
        "num_turns": 2,
        "duration_ms": printed["duration_ms"],
    }
    assert out.usage.total_cost_usd > 0 and out.usage.input_tokens > 0
    assert evs[-1].status == "succeeded" and evs[-1].payload["artifact_id"] == out.artifact_id


async def test_what_the_agent_changed_is_the_diff(
    agents: Agents, settings: Settings, workspace: Path, home: Path
) -> None:
    (workspace / "app.py").write_text("print('hi')\n")
    out = await ActivityEnvironment().run(
        agents.run, agent(workspace, home, "[edit app.py] say bye")
    )
    assert (workspace / "app.py").read_text() == "print('hi')\nfake-claude: say bye\n"
    assert out.diff is not None and out.diff.files_changed == ["app.py"]
    assert out.diff.lines_added == 1 and out.diff.lines_removed == 0
    assert out.diff.patch_path is not None
    assert "+fake-claude: say bye" in (settings.artifacts_dir / out.diff.patch_path).read_text()


async def test_a_follow_up_resumes_the_latest_session_in_the_same_directory(
    agents: Agents, db: Database, workspace: Path, home: Path, tmp_path: Path
) -> None:
    first = await ActivityEnvironment().run(agents.run, agent(workspace, home, "start"))
    assert first.session_id is not None
    follow = agent(
        workspace, home, "go on", stage="iteration-2", resume_session_id=first.session_id
    )
    second = await ActivityEnvironment().run(agents.run, follow)
    assert second.outcome == "succeeded"
    # The agent found the first transcript, and went on under a session id of its own.
    assert second.session_id not in (None, first.session_id)
    started = [e for e in await all_events(db) if e.type == "stage_started"][1]
    argv = started.payload["argv"]
    assert argv[argv.index("--resume") + 1] == first.session_id
    said = next(
        e for e in await all_events(db) if e.type == "agent.assistant" and e.stage == "iteration-2"
    )
    assert f"resuming {first.session_id}" in said.message
    assert (workspace / "NOTES.md").read_text() == "- start\n- go on\n"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = await ActivityEnvironment().run(
        agents.run, agent(elsewhere, home, "go on", resume_session_id=second.session_id, diff=False)
    )
    assert lost.outcome == "failed" and lost.exit_code == 1 and lost.session_id is None
    assert lost.error == (
        "the agent exited with status 1: "
        f"No conversation found with session ID: {second.session_id}"
    )


async def test_the_mcp_config_is_a_private_file_outside_the_workspace(
    agents: Agents, db: Database, settings: Settings, workspace: Path, home: Path, tmp_path: Path
) -> None:
    config = {"mcpServers": {"docs": {"command": "docs-server", "env": {"TOKEN": "t0ken"}}}}
    copy = tmp_path / "seen.json"
    path = settings.artifacts_dir / "task-test" / ".iteration-1.mcp.json"
    prompt = f"[bash cp {path} {copy} && stat -c %a {path}]"
    out = await ActivityEnvironment().run(
        agents.run, agent(workspace, home, prompt, mcp_config=config)
    )
    assert out.outcome == "succeeded"
    assert json.loads(copy.read_text()) == config
    evs = await all_events(db)
    argv = evs[0].payload["argv"]
    assert argv[argv.index("--mcp-config") + 1] == str(path)
    init = next(e for e in evs if e.type == "agent.system")
    assert init.payload["mcp_servers"] == [{"name": "docs", "status": "connected"}]
    [tool_result] = [e for e in evs if e.type == "agent.user"]
    assert tool_result.payload["message"]["content"][0]["content"] == "600"
    assert out.diff is not None and out.diff.files_changed == []
    assert not path.exists()


async def test_the_watchdog_kills_a_silent_agent_and_its_group(
    agents: Agents, db: Database, workspace: Path, home: Path
) -> None:
    out = await ActivityEnvironment().run(
        agents.run, agent(workspace, home, "[hang] [child]", idle_timeout_seconds=2)
    )
    assert out.outcome == "idle"
    assert out.error == "the agent printed nothing for 2 s and was stopped"
    [leader] = await wait_for_lines(home / "pids")
    [child] = await wait_for_lines(home / "children")
    assert not alive(leader) and not alive(child)
    evs = await all_events(db)
    assert [e.type for e in evs] == ["stage_started", "agent.system", "step_finished"]
    assert evs[-1].status == "idle"
    assert out.session_id == evs[1].payload["session_id"]


async def test_the_timeout_bounds_an_agent_that_keeps_talking(
    agents: Agents, workspace: Path, home: Path
) -> None:
    edits = " ".join(f"[edit f{i}.txt]" for i in range(20))
    out = await ActivityEnvironment().run(
        agents.run,
        agent(workspace, home, f"[slow 0.2] {edits}", timeout_seconds=3, idle_timeout_seconds=30),
    )
    assert out.outcome == "timed_out"
    assert out.error == "the agent ran past 3 s and was stopped"
    [leader] = await wait_for_lines(home / "pids")
    assert not alive(leader)
    # What it did before it was stopped is still reported.
    assert out.diff is not None and 0 < len(out.diff.files_changed) < 20


async def test_cancel_kills_the_group_even_what_ignores_sigterm(
    agents: Agents, db: Database, workspace: Path, home: Path
) -> None:
    env = ActivityEnvironment()
    running = asyncio.create_task(
        env.run(agents.run, agent(workspace, home, "[ignore-term] [child] [slow 5] [edit a]"))
    )
    [leader] = await wait_for_lines(home / "pids")
    [child] = await wait_for_lines(home / "children")
    # Lines reach the event log while the agent still runs: a live stream sees them.
    deadline = time.monotonic() + 20
    while "agent.system" not in [e.type for e in await all_events(db)]:
        assert time.monotonic() < deadline, "the init line never became an event"
        await asyncio.sleep(0.05)
    assert alive(leader) and alive(child)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not alive(leader) and not alive(child)
    evs = await all_events(db)
    assert [e.type for e in evs] == ["stage_started", "agent.system", "step_finished"]
    assert evs[-1].status == "canceled"


DEAD_WORKER = """
import asyncio, sys
from temporalio.testing import ActivityEnvironment
from activities.agents import AgentRunIn, Agents
from settings import Settings
from store.engine import Database

async def main() -> None:
    settings = Settings(data_dir=sys.argv[1], database_url=sys.argv[2], _env_file=None)
    agents = Agents(Database(settings.db_url), settings)
    await ActivityEnvironment().run(agents.run, AgentRunIn.model_validate_json(sys.argv[3]))

asyncio.run(main())
"""


async def test_a_retried_attempt_kills_the_orphan_of_a_dead_worker(
    agents: Agents, db: Database, settings: Settings, workspace: Path, home: Path
) -> None:
    run = agent(workspace, home, "[hang-once] after the crash")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DEAD_WORKER,
            str(settings.data_dir),
            settings.db_url,
            run.model_dump_json(),
        ],
        cwd=ROOT,
    )
    try:
        [orphan] = await wait_for_lines(home / "pids")
        pgid_file = settings.artifacts_dir / "task-test" / ".iteration-1.pgid"
        await wait_for_lines(pgid_file, 2)  # "<pid> <start time>": the worker's bookkeeping
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    assert alive(orphan) and os.getpgid(orphan) == orphan

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2)
    out = await env.run(agents.run, run)
    assert not alive(orphan)
    assert out.outcome == "succeeded"
    assert (workspace / "NOTES.md").read_text() == "- after the crash\n"
    started = [e for e in await all_events(db) if e.type == "stage_started"]
    assert [e.payload["attempt"] for e in started] == [1, 2]


def test_render_keeps_each_value_one_argument_and_interprets_nothing() -> None:
    prompt = """it's "quoted" $(touch pwned) `id` ; rm -rf ~ {model} \\n"""
    argv = render(
        "claude -p {prompt} --model={model} '{mode} x'",
        {"prompt": prompt, "model": "m 1", "mode": "plan"},
    )
    assert argv == ["claude", "-p", prompt, "--model=m 1", "plan x"]
    with pytest.raises(ValueError, match=r"unknown placeholder \{nope\}"):
        render("claude -p {prompt} {nope}", {"prompt": "x"})


async def test_the_prompt_reaches_the_agent_whole_and_stays_out_of_the_log(
    agents: Agents, db: Database, workspace: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = """keep "this" $(touch pwned) ; `touch pwned2` secret-plan-42"""
    caplog.set_level(logging.INFO)
    out = await ActivityEnvironment().run(agents.run, agent(workspace, home, prompt))
    assert out.outcome == "succeeded"
    assert (workspace / "NOTES.md").read_text() == f"- {prompt}\n"
    assert not (workspace / "pwned").exists() and not (workspace / "pwned2").exists()
    started = (await all_events(db))[0]
    assert started.type == "stage_started"
    assert started.payload["argv"][2:4] == ["-p", f"<prompt: {len(prompt)} chars>"]
    assert "secret-plan-42" not in json.dumps(started.payload) + started.message
    assert not any("secret-plan-42" in r.getMessage() for r in caplog.records)


async def test_a_line_that_is_not_json_is_agent_output(
    agents: Agents, db: Database, workspace: Path, home: Path
) -> None:
    out = await ActivityEnvironment().run(agents.run, agent(workspace, home, "[noise] hi"))
    assert out.outcome == "succeeded"
    evs = await all_events(db)
    assert [e.type for e in evs[1:3]] == ["agent.output", "agent.system"]
    assert evs[1].payload == {"line": "fake-claude: warming up (this line is not JSON)"}


async def test_a_failing_agent_is_an_outcome_with_its_last_stderr_line(
    agents: Agents, db: Database, settings: Settings, workspace: Path, home: Path
) -> None:
    out = await ActivityEnvironment().run(agents.run, agent(workspace, home, "[fail] try"))
    assert out.outcome == "failed" and out.exit_code == 1
    assert out.subtype == "error_during_execution" and out.is_error is True
    assert out.error == (
        "the agent exited with status 1 (error_during_execution): "
        "Error: fake failure during execution"
    )
    assert "Error: fake failure during execution\n" in await log_of(db, settings, out)
    evs = await all_events(db)
    assert evs[-2].type == "agent.result" and evs[-2].status == "error_during_execution"
    assert evs[-1].status == "failed"


async def test_max_turns_is_a_failed_outcome_even_with_exit_zero(
    agents: Agents, workspace: Path, home: Path
) -> None:
    out = await ActivityEnvironment().run(
        agents.run, agent(workspace, home, "[edit a] [edit b]", max_turns=2)
    )
    assert out.outcome == "failed" and out.exit_code == 0
    assert out.error == "the agent's result is an error (error_max_turns)"
    assert (workspace / "a").exists() and not (workspace / "b").exists()


async def test_a_command_the_agent_refuses_or_that_is_missing_fails_in_words(
    agents: Agents, workspace: Path, home: Path
) -> None:
    unverbose = COMMAND.replace(" --verbose", "")
    out = await ActivityEnvironment().run(
        agents.run, agent(workspace, home, "hi", command=unverbose)
    )
    assert out.outcome == "failed"
    assert out.error == (
        "the agent exited with status 1: "
        "Error: When using --print, --output-format=stream-json requires --verbose"
    )
    missing = await ActivityEnvironment().run(
        agents.run, agent(workspace, home, "hi", command="/no/such/claude -p {prompt}")
    )
    assert missing.outcome == "failed" and missing.exit_code == 127
    assert missing.error == (
        "the agent exited with status 127: pilothouse: command not found: '/no/such/claude'"
    )


async def test_the_agent_sees_its_env_but_not_the_workers_secrets(
    agents: Agents, db: Database, workspace: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PILOTHOUSE_DATABASE_URL", "postgresql://u:hunter2@db/x")
    run = agent(workspace, home, "[bash env]")
    run.env["GREETING"] = "hello"
    out = await ActivityEnvironment().run(agents.run, run)
    assert out.outcome == "succeeded"
    [tool_result] = [e for e in await all_events(db) if e.type == "agent.user"]
    seen = tool_result.payload["message"]["content"][0]["content"].splitlines()
    assert "GREETING=hello" in seen and any(line.startswith("PATH=") for line in seen)
    assert not any("hunter2" in line for line in seen)


async def test_a_prompt_that_looks_like_an_option_stays_the_prompt(
    agents: Agents, workspace: Path, home: Path
) -> None:
    out = await ActivityEnvironment().run(
        agents.run, agent(workspace, home, "--dangerously-skip-permissions")
    )
    assert out.outcome == "succeeded"
    assert (workspace / "NOTES.md").read_text() == "- --dangerously-skip-permissions\n"


async def test_a_child_left_holding_the_output_is_stopped_when_the_agent_ends(
    agents: Agents, workspace: Path, home: Path
) -> None:
    out = await ActivityEnvironment().run(agents.run, agent(workspace, home, "[child] note"))
    assert out.outcome == "succeeded" and out.result == "Done: note"
    [child] = await wait_for_lines(home / "children")
    assert not alive(child)
