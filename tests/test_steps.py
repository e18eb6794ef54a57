"""The step executor: output to an artifact, a tail in the event log, typed failures,
heartbeats, and a process group that is really gone after a cancel or a timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.records import Transition
from activities.step_records import StepInput, StepRecords, StepResult
from activities.step_series import SeriesInput, SeriesResult, StepSeries
from activities.steps import Steps
from settings import Settings
from store.engine import Database
from store.models import Artifact, Event, StepRun
from store.writes import Writes


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def wait_for_file(path: Path, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.05)
    return path.read_text()


def step(argv: list[str], **extra: object) -> StepInput:
    return StepInput(resource_kind="job", resource_id="job-test", stage="build", argv=argv, **extra)


@pytest.fixture
def steps(db: Database, settings: Settings) -> Steps:
    return Steps(db, settings.artifacts_dir)


async def events_of(db: Database) -> list[Event]:
    """The step_finished events; each step also writes a stage_started one first."""
    async with db.session() as session:
        rows = list((await session.exec(select(Event).order_by(col(Event.id)))).all())
    assert [e.type for e in rows][::2] == ["stage_started"] * (len(rows) // 2)
    return [e for e in rows if e.type == "step_finished"]


async def test_output_goes_to_an_artifact_and_the_tail_to_the_event_log(
    steps: Steps, db: Database, settings: Settings
) -> None:
    script = "for i in $(seq 1 50); do echo line $i; done; echo oops >&2"
    result: StepResult = await ActivityEnvironment().run(
        steps.run, step(["sh", "-c", script], tail_lines=3)
    )
    assert result.exit_code == 0
    assert result.tail == ["line 49", "line 50", "oops"]
    async with db.session() as session:
        artifact = await session.get(Artifact, result.artifact_id)
    assert artifact is not None and artifact.stage == "build"
    content = (settings.artifacts_dir / artifact.path).read_text()
    assert content.startswith("line 1\n") and content.endswith("oops\n")
    assert artifact.size_bytes == len(content.encode())
    [event] = await events_of(db)
    assert event.type == "step_finished" and event.status == "succeeded"
    assert event.payload["tail"] == ["line 49", "line 50", "oops"]
    assert event.payload["artifact_id"] == artifact.id


async def test_a_non_zero_exit_is_step_failed_with_its_code(steps: Steps, db: Database) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(steps.run, step(["sh", "-c", "echo bad; exit 3"]))
    assert raised.value.type == "StepFailed"
    assert raised.value.details[0]["exit_code"] == 3
    assert raised.value.details[0]["tail"] == ["bad"]
    [event] = await events_of(db)
    assert event.status == "failed" and event.payload["exit_code"] == 3


async def test_a_missing_program_is_step_failed_127(steps: Steps) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(steps.run, step(["/no/such/program"]))
    assert raised.value.type == "StepFailed"
    assert raised.value.details[0]["exit_code"] == 127
    assert "command not found: '/no/such/program'" in raised.value.message


async def test_the_step_sees_its_env_but_not_the_workers_secrets(
    steps: Steps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PILOTHOUSE_DATABASE_URL", "postgresql://u:hunter2@db/x")
    result = await ActivityEnvironment().run(
        steps.run, step(["sh", "-c", "env"], env={"GREETING": "hello"}, tail_lines=200)
    )
    assert "GREETING=hello" in result.tail
    assert not any("hunter2" in line for line in result.tail)
    assert any(line.startswith("PATH=") for line in result.tail)


async def test_it_heartbeats_every_second(steps: Steps) -> None:
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    await env.run(steps.run, step(["sleep", "2.5"]))
    assert len(beats) >= 2


async def test_a_timeout_kills_the_group(steps: Steps, db: Database, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pids}; wait"
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            steps.run, step(["sh", "-c", script], timeout_seconds=1.5, kill_grace_seconds=1)
        )
    assert raised.value.type == "StepTimedOut"
    assert not any(alive(int(pid)) for pid in pids.read_text().split())
    [event] = await events_of(db)
    assert event.status == "timed_out"


async def test_cancel_sends_sigterm_then_sigkill_to_the_group(
    steps: Steps, db: Database, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # The shell ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    script = f"trap '' TERM; sleep 60 & echo $$ $! > {pids}; while true; do sleep 0.1; done"
    env = ActivityEnvironment()
    running = asyncio.create_task(
        env.run(steps.run, step(["sh", "-c", script], kill_grace_seconds=0.5))
    )
    shell, child = (int(p) for p in (await wait_for_file(pids)).split())
    assert alive(shell) and alive(child)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not alive(shell) and not alive(child)
    [event] = await events_of(db)
    assert event.status == "canceled"


def local_activity() -> ActivityEnvironment:
    """An environment whose activity is a local one, as a replay runs it again: the same
    workflow run, the same sequence number, the same attempt."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, is_local=True, workflow_run_id=f"run-{uuid.uuid4()}", activity_id="7"
    )
    return env


async def test_a_finished_local_step_answers_a_replay_from_its_record(
    steps: Steps, db: Database, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    env = local_activity()
    ran = step(["sh", "-c", f"echo ran >> {count}; echo done"])
    first: StepResult = await env.run(steps.run, ran)
    again: StepResult = await env.run(steps.run, ran)
    assert again == first and count.read_text() == "ran\n"
    assert len(await events_of(db)) == 1
    other: StepResult = await local_activity().run(steps.run, ran)
    assert other.artifact_id != first.artifact_id and count.read_text() == "ran\nran\n"


async def test_a_series_replayed_runs_only_its_steps_that_did_not_finish(
    steps: Steps, db: Database, tmp_path: Path
) -> None:
    """Each step of a series has a step-run key of its own (its place in the series): a
    replay answers the finished ones and runs the rest, and a failing step ends it."""
    counts = tmp_path / "counts"
    counts.mkdir()

    def counted(name: str, then: str = "true") -> StepInput:
        script = f"echo ran >> {counts}/{name}; {then}"
        return StepInput(
            resource_kind="job", resource_id="job-test", stage=name, argv=["sh", "-c", script]
        )

    gate = tmp_path / "pass"
    series = SeriesInput(steps=[counted("a"), counted("b", f"test -e {gate}"), counted("c")])
    env = local_activity()
    failed: SeriesResult = await env.run(StepSeries(steps).run, series)
    assert failed.error == "step 'b' exited with status 1" and failed.ran == 2
    gate.touch()
    # A replay of the same attempt comes to what it came to, and runs nothing.
    assert await env.run(StepSeries(steps).run, series) == failed
    env.info = dataclasses.replace(env.info, attempt=2)
    retried: SeriesResult = await env.run(StepSeries(steps).run, series)
    assert retried.error is None and retried.ran == 3
    runs = {p.name: len(p.read_text().splitlines()) for p in counts.iterdir()}
    assert runs == {"a": 1, "b": 2, "c": 1}


async def test_an_ordinary_series_retried_runs_no_finished_step_and_loses_nothing(
    steps: Steps, db: Database, tmp_path: Path
) -> None:
    """A series in an ordinary activity (a run's builder and auditor) keeps its steps' ends
    under the activity's id, which its retries share: a retry after a lost worker runs
    only what did not finish, and one whose attempts before it wrote nothing writes what
    the workflow carried."""
    count = tmp_path / "count"
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, is_local=False, workflow_run_id=f"run-{uuid.uuid4()}", activity_id="3"
    )

    def carried(name: str) -> Transition:
        return Transition(resource_kind="job", resource_id="job-test", event_type=name)

    ran = StepInput(
        resource_kind="job",
        resource_id="job-test",
        stage="a",
        argv=["sh", "-c", f"echo a >> {count}"],
    )
    # Attempt 2 of a series whose first attempt died before it wrote anything.
    env.info = dataclasses.replace(env.info, attempt=2)
    first = SeriesInput(steps=[ran], facts=[carried("carried_once")])
    assert (await env.run(StepSeries(steps).run, first)).ran == 1
    # Attempt 3, after a worker lost once step "a" had finished: "a" is answered.
    env.info = dataclasses.replace(env.info, attempt=3)
    again = SeriesInput(steps=[ran], facts=[carried("carried_once")])
    assert (await env.run(StepSeries(steps).run, again)).ran == 1
    assert count.read_text().split() == ["a"]
    async with db.session() as session:
        types = [e.type for e in (await session.exec(select(Event).order_by(col(Event.id))))]
    assert types == ["carried_once", "stage_started", "step_finished"]


async def test_a_series_commits_once_a_step_and_keeps_each_start_and_end(
    steps: Steps, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next step's start goes in the transaction of the end before it."""
    commits = 0
    commit = AsyncSession.commit

    async def counted(self: AsyncSession) -> None:
        nonlocal commits
        commits += 1
        await commit(self)

    monkeypatch.setattr(AsyncSession, "commit", counted)
    series = SeriesInput(
        steps=[
            StepInput(resource_kind="job", resource_id="job-test", stage=name, argv=["true"])
            for name in "abc"
        ]
    )
    done: SeriesResult = await local_activity().run(StepSeries(steps).run, series)
    assert done.error is None and done.ran == 3
    assert commits == 4  # the first start, then one a step
    async with db.session() as session:
        rows = (await session.exec(select(Event).order_by(col(Event.id)))).all()
    assert [(e.type, e.stage) for e in rows] == [
        (t, s) for s in "abc" for t in ("stage_started", "step_finished")
    ]


async def test_a_step_of_a_series_is_never_answered_with_another_stages_end(
    steps: Steps, tmp_path: Path
) -> None:
    """Its step-run key names its stage: a series that covered other stages at the same
    place (it cannot, while the workflow decides where series end) runs its own."""
    ran = tmp_path / "ran"

    def named(stage: str) -> StepInput:
        script = f"echo {stage} >> {ran}"
        return StepInput(
            resource_kind="job", resource_id="job-test", stage=stage, argv=["sh", "-c", script]
        )

    env = local_activity()
    await env.run(StepSeries(steps).run, SeriesInput(steps=[named("a"), named("b")]))
    await env.run(StepSeries(steps).run, SeriesInput(steps=[named("a"), named("c")]))
    assert ran.read_text().split() == ["a", "b", "c"]


async def test_a_cancel_during_a_record_lets_it_end_and_ends_the_step_it_started(
    steps: Steps, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next step's start is written with the end before it; a cancel that comes then
    waits for that record, and the step that never ran gets its end too."""
    write_start = StepRecords._write_start
    writing = asyncio.Event()

    async def slowly(self: StepRecords, writes: Writes, step: StepInput, *args: Any) -> Any:
        if step.stage == "b":
            writing.set()
            await asyncio.sleep(0.3)
        return await write_start(self, writes, step, *args)

    monkeypatch.setattr(StepRecords, "_write_start", slowly)
    series = SeriesInput(
        steps=[
            StepInput(resource_kind="job", resource_id="job-test", stage=name, argv=["true"])
            for name in "abc"
        ]
    )
    env = local_activity()
    running = asyncio.create_task(env.run(StepSeries(steps).run, series))
    await writing.wait()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    async with db.session() as session:
        rows = (await session.exec(select(Event).order_by(col(Event.id)))).all()
    assert [(e.type, e.stage, e.status) for e in rows] == [
        ("stage_started", "a", "running"),
        ("step_finished", "a", "succeeded"),
        ("stage_started", "b", "running"),
        ("step_finished", "b", "canceled"),
    ]
    async with db.session() as session:
        runs = (await session.exec(select(StepRun.key, StepRun.outcome))).all()
    # A replay finds each step's end: b's too, written by the record that ended it unrun.
    assert {key.split("/")[-1]: outcome for key, outcome in runs} == {
        "a": "succeeded",
        "b": "canceled",
    }


async def test_a_local_step_whose_changes_cannot_be_read_runs_again(
    steps: Steps, tmp_path: Path
) -> None:
    """It did not end: a replay must run it, not answer a success without its changes."""
    work, count = tmp_path / "work", tmp_path / "count"
    work.mkdir()
    for argv in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *argv], cwd=work, check=True
        )
    env = local_activity()
    breaks = step(["sh", "-c", f"echo ran >> {count}; rm -rf .git"], cwd=str(work), diff=True)
    for _ in range(2):
        with pytest.raises(ApplicationError) as failed:
            await env.run(steps.run, breaks)
        assert failed.value.type == "WorkspaceError"
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    assert count.read_text() == "ran\nran\n"
