"""The step executor: the one activity that runs a command for any workflow family.

The command runs in its own process group (activities/processes.py: heartbeats, the kill
on a cancel or the timeout), with its output going to an artifact file.

Jobs and runs use `steps.run`, whose output goes straight to the file. Other activities
(the agent adapter) call `Steps.execute` with a `Streaming`: the output is then read line
by line, written to the same file and handed to a `LineSink`, and a watchdog stops a
command that prints nothing for a while. Either way the failure is theirs to judge.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from pydantic import BaseModel, Field
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import step_runs, work_trees
from activities.processes import Heard, stop_orphan, supervise, write_pgid_file
from activities.records import CarriesDecisions, write_carried
from activities.step_logs import close_pumps, describe_log, pump
from activities.work_trees import Diff
from store import events, resources
from store.engine import Database
from store.models import Artifact, StepRun

# What a step inherits from the worker; everything else (database URLs, tokens) stays out.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "SHELL")
NOT_STARTABLE = 127
T = TypeVar("T")


class StepInput(CarriesDecisions):
    resource_kind: str
    resource_id: str
    stage: str
    argv: list[str] = Field(min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(None, gt=0)
    retries: int = Field(0, ge=0, description="Times a failing command runs again")
    kill_grace_seconds: float = Field(5.0, ge=0)
    tail_lines: int = Field(20, ge=0, le=200)
    diff: bool = Field(False, description="Report what the command changed in `cwd`'s work tree")
    resource_state: str = Field("running", description="The resource's state while it runs")
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Parts' columns to set as it starts (`records`)"
    )


class StepResult(BaseModel):
    exit_code: int
    artifact_id: str
    tail: list[str]
    duration_ms: int
    diff: Diff | None = None


class LineSink(Protocol):
    """Takes a streamed step's output, one line at a time, as it is read."""

    def line(self, data: bytes, stream: str) -> None:
        """One line without its newline, from `stream` ("stdout" or "stderr"). It must not
        block: the pipes are read between calls."""

    async def drain(self) -> None:
        """Finish with what it was given; called once the command is gone."""


@dataclass
class Streaming:
    """Read the output line by line into `sink`; stop the command after a silence."""

    sink: LineSink
    idle_timeout_seconds: float | None = None


@dataclass
class Ran:
    """What one attempt came to, for the record."""

    relative: Path
    path: Path
    exit_code: int
    outcome: str  # succeeded | failed | timed_out | idle | canceled
    duration_ms: int
    attempt: int
    diff: Diff | None
    key: str | None


@dataclass
class Link:
    """Between two steps of a series (`step_series`): the next step is started in the
    transaction that records the end of the one before, when that one succeeded: one
    commit a step instead of two."""

    step: StepInput
    part: int
    started: bool = False
    earlier: StepRun | None = None  # what `_started` would have answered


@dataclass
class Executed:
    result: StepResult
    outcome: str  # succeeded | failed | timed_out | idle
    attempt: int

    def error(self, step: StepInput) -> ApplicationError | None:
        """Why the step failed, as the error that fails its activity; None if it did not.
        A failure is final once the step's own retries are spent."""
        final = self.attempt > step.retries
        details = self.result.model_dump()
        if self.outcome == "timed_out":
            message = f"step {step.stage!r} timed out after {step.timeout_seconds} s"
            return ApplicationError(message, details, type="StepTimedOut", non_retryable=final)
        if self.result.exit_code != 0:
            message = failure(step, self.result.exit_code, self.result.tail)
            return ApplicationError(message, details, type="StepFailed", non_retryable=final)
        return None


class Steps:
    """Bound to the worker's database and artifacts directory."""

    def __init__(self, db: Database, artifacts_dir: Path) -> None:
        self.db = db
        self.artifacts_dir = artifacts_dir

    @activity.defn(name="steps.run")
    async def run(self, step: StepInput) -> StepResult:
        done = await self.execute(step)
        error = done.error(step)
        if error is not None:
            # Attempts also count worker crashes, which the retry policy retries on its own.
            raise error
        return done.result

    async def execute(
        self,
        step: StepInput,
        *,
        shown_argv: list[str] | None = None,
        streaming: Streaming | None = None,
        part: int | None = None,
        begun: Link | None = None,
        then: Link | None = None,
    ) -> Executed:
        """Run the step and record it; its outcome is returned. A cancel raises, and so
        does an error of Pilothouse's own (the database, the work tree), recorded `errored`.
        `shown_argv` is what `stage_started` shows instead of the argv (redactions).
        In a series that one activity runs (`step_series`): `part` is the step's place,
        `begun` the link whose record started it, `then` the link to the next step."""
        attempt = activity.info().attempt
        key = step_runs.key(part, step.stage)
        slug = stage_slug(step.stage)
        relative = Path(step.resource_id) / f"{slug}-{attempt}-{uuid.uuid4().hex[:8]}.log"
        path = self.artifacts_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pgid_file = path.parent / f".{slug}.pgid"
        shown = step.argv if shown_argv is None else shown_argv
        if begun is not None and begun.started:
            earlier = begun.earlier
        else:
            earlier = await self._started(step, attempt, shown, key)
        if earlier is not None:
            result = StepResult.model_validate(earlier.result)
            return Executed(result=result, outcome=earlier.outcome, attempt=earlier.attempt)
        started = time.monotonic()
        # Until the command's own outcome is known, an error here is Pilothouse's: the step
        # did not end, and a replay runs it again rather than answer for it.
        outcome = "errored"
        exit_code = NOT_STARTABLE
        diff: Diff | None = None
        try:
            # Once the start is recorded, its end is too, whatever happens from here.
            if pgid_file.exists():
                await asyncio.to_thread(stop_orphan, pgid_file)
            locks = self.artifacts_dir / work_trees.LOCKS
            before = (
                await work_trees.snapshot(Path(step.cwd), locks) if step.diff and step.cwd else None
            )
            with path.open("wb") as out:
                if streaming is None:
                    exit_code, outcome = await self._execute(step, out, pgid_file)
                else:
                    exit_code, outcome = await self._stream(step, out, pgid_file, streaming)
            if before is not None and step.cwd:
                patch = relative.parent / "patches" / f"{slug}-{attempt}.patch"
                try:
                    diff = await work_trees.changes(
                        Path(step.cwd), before, self.artifacts_dir, patch
                    )
                except Exception:
                    # A step whose changes cannot be read did not end: the error fails it,
                    # and a replay runs it again rather than answer for it (`step_runs.FINAL`).
                    outcome = "errored"
                    raise
        except asyncio.CancelledError:
            outcome = "canceled"
            raise
        finally:
            if streaming is not None:
                # What the sink still holds goes before `step_finished`.
                await asyncio.shield(streaming.sink.drain())
            duration_ms = int((time.monotonic() - started) * 1000)
            ran = Ran(relative, path, exit_code, outcome, duration_ms, attempt, diff, key)
            result = await finished(self._record(step, ran, then))
        return Executed(result=result, outcome=outcome, attempt=attempt)

    async def abandon(self, link: Link) -> None:
        """End the step `link` started, which never ran: a cancel came between the record
        that started it and its run. Run it with `finished`."""
        attempt = activity.info().attempt
        stage = link.step.stage
        async with self.db.session() as session:
            await events.append(
                session,
                link.step.resource_kind,
                link.step.resource_id,
                "step_finished",
                stage=stage,
                status="canceled",
                message=f"{stage}: canceled before it ran",
                payload={"attempt": attempt},
            )
            key = step_runs.key(link.part, stage)
            if key is not None:
                await step_runs.end(session, key, attempt, "canceled", {})
            await session.commit()

    async def _execute(self, step: StepInput, out: BinaryIO, pgid_file: Path) -> tuple[int, str]:
        process = await self._spawn(step, out, pgid_file, piped=False)
        if process is None:
            return NOT_STARTABLE, "failed"
        return await supervise(process, pgid_file, step.timeout_seconds, step.kill_grace_seconds)

    async def _stream(
        self, step: StepInput, out: BinaryIO, pgid_file: Path, streaming: Streaming
    ) -> tuple[int, str]:
        process = await self._spawn(step, out, pgid_file, piped=True)
        if process is None:
            return NOT_STARTABLE, "failed"
        assert process.stdout is not None and process.stderr is not None
        heard = Heard()
        pumps = [
            asyncio.create_task(pump(process.stdout, "stdout", out, streaming.sink.line, heard)),
            asyncio.create_task(pump(process.stderr, "stderr", out, streaming.sink.line, heard)),
        ]
        try:
            return await supervise(
                process,
                pgid_file,
                step.timeout_seconds,
                step.kill_grace_seconds,
                heard,
                streaming.idle_timeout_seconds,
            )
        finally:
            await asyncio.shield(close_pumps(process.pid, pumps))

    async def _spawn(
        self, step: StepInput, out: BinaryIO, pgid_file: Path, *, piped: bool
    ) -> asyncio.subprocess.Process | None:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ} | step.env
        try:
            process = await asyncio.create_subprocess_exec(
                *step.argv,
                cwd=step.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if piped else out,
                stderr=asyncio.subprocess.PIPE if piped else asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            if step.cwd is not None and not await asyncio.to_thread(Path(step.cwd).is_dir):
                why = f"cannot start {step.argv[0]!r}: no such directory {step.cwd!r}"
            else:
                why = f"command not found: {step.argv[0]!r}"
            out.write(f"pilothouse: {why}\n".encode())
            return None
        except (OSError, ValueError) as exc:
            out.write(f"pilothouse: cannot start {step.argv[0]!r}: {exc}\n".encode())
            return None
        # A worker killed mid-step leaves its group running; the next attempt stops it.
        write_pgid_file(pgid_file, process.pid)
        return process

    async def _started(
        self, step: StepInput, attempt: int, argv: list[str], key: str | None
    ) -> StepRun | None:
        """Record the start; for a local step that ended before a replay, that end instead
        (nothing is written then, and nothing runs)."""
        async with self.db.session() as session:
            earlier = await self._write_start(session, step, attempt, argv, key)
            if earlier is None:
                await session.commit()
        return earlier

    async def _write_start(
        self, session: AsyncSession, step: StepInput, attempt: int, argv: list[str], key: str | None
    ) -> StepRun | None:
        first = True
        if key is not None:
            begun = await step_runs.begin(session, key, attempt, step.resource_id)
            if begun.earlier is not None:
                return begun.earlier
            first = begun.first
        # The decision that let this stage start comes first in the log; a local step
        # run again after a lost worker has written it already.
        if first:
            await write_carried(session, step)
        await resources.set_fields(
            session,
            step.resource_kind,
            step.resource_id,
            state=step.resource_state,
            stage=step.stage,
        )
        await resources.set_parts(session, step.resource_kind, step.resource_id, step.parts)
        await events.append(
            session,
            step.resource_kind,
            step.resource_id,
            "stage_started",
            stage=step.stage,
            status="running",
            message=f"{step.stage}: started (attempt {attempt})",
            payload={"stage": step.stage, "attempt": attempt, "argv": argv},
        )
        return None

    async def _record(self, step: StepInput, ran: Ran, then: Link | None) -> StepResult:
        size, checksum, tail = await describe_log(ran.path, step.tail_lines)
        artifact = Artifact(
            resource_kind=step.resource_kind,
            resource_id=step.resource_id,
            stage=step.stage,
            kind="log",
            path=str(ran.relative),
            size_bytes=size,
            checksum_sha256=checksum,
        )
        result = StepResult(
            exit_code=ran.exit_code,
            artifact_id=artifact.id,
            tail=tail,
            duration_ms=ran.duration_ms,
            diff=ran.diff,
        )
        async with self.db.session() as session:
            await resources.insert(session, Artifact, artifact.model_dump())
            await events.append(
                session,
                step.resource_kind,
                step.resource_id,
                "step_finished",
                stage=step.stage,
                status=ran.outcome,
                message=f"{step.stage}: {ran.outcome} (exit {ran.exit_code})",
                payload={**result.model_dump(exclude={"diff"}), "attempt": ran.attempt},
            )
            if ran.key is not None:
                await step_runs.end(
                    session, ran.key, ran.attempt, ran.outcome, result.model_dump(mode="json")
                )
            if then is not None and ran.outcome == "succeeded":
                key = step_runs.key(then.part, then.step.stage)
                then.earlier = await self._write_start(
                    session, then.step, ran.attempt, then.step.argv, key
                )
                then.started = True
            await session.commit()
        return result


async def finished(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even when the caller is canceled meanwhile, then let the cancel
    go on: a step's record is written before its activity says it was canceled, so the
    resource's end, which the workflow writes after that, comes after it in the log."""
    task = asyncio.ensure_future(work)
    canceled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            canceled = True
    result = task.result()
    if canceled:
        raise asyncio.CancelledError
    return result


def stage_slug(stage: str) -> str:
    """A stage's name as a file name: its logs, patches and pgid file are named by it."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stage)[:80]


def failure(step: StepInput, exit_code: int, tail: list[str]) -> str:
    """Why a step failed, in words: the exit status and the last line it printed."""
    text = f"step {step.stage!r} exited with status {exit_code}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"{text}: {last}" if last else text
