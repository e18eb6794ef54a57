"""The step executor: the one activity that runs a command for any workflow family.

The command runs in its own process group (activities/processes.py: the kill on a cancel
or the timeout), with its output going to an artifact file; while it is handled, the
activity heartbeats (activities/heartbeats.py).

Jobs and runs use `steps.run` (or `steps.run_series`, several steps in one activity), whose
output goes straight to the file. Other activities (the agent adapter) call
`Steps.execute` with a `Streaming`: the output is then read line by line, written to the
same file and handed to a `LineSink`, and a watchdog stops a command that prints nothing
for a while. Either way the failure is theirs to judge.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import step_runs, work_trees
from activities.heartbeats import pulse
from activities.processes import Heard, stop_orphan, supervise, write_pgid_file
from activities.step_logs import close_pumps, pump
from activities.step_records import (
    Link,
    Ran,
    StepInput,
    StepRecords,
    StepResult,
    finished,
)
from activities.work_trees import Diff
from store.engine import Database

# What a step inherits from the worker; everything else (database URLs, tokens) stays out.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "SHELL")
NOT_STARTABLE = 127


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
        self.records = StepRecords(db)

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
            earlier = await self.records.started(step, attempt, shown, key)
        if earlier is not None:
            result = StepResult.model_validate(earlier.result)
            return Executed(result=result, outcome=earlier.outcome, attempt=earlier.attempt)
        # Heartbeats from its recorded start: a cancel they bring finds the step's end
        # written whatever comes (`_run`'s `finally`).
        async with pulse(step.stage):
            return await self._run(step, streaming, then, attempt, key, relative, pgid_file)

    async def _run(
        self,
        step: StepInput,
        streaming: Streaming | None,
        then: Link | None,
        attempt: int,
        key: str | None,
        relative: Path,
        pgid_file: Path,
    ) -> Executed:
        path = self.artifacts_dir / relative
        started = time.monotonic()
        # Until the command's own outcome is known, an error here is Pilothouse's: the step
        # did not end, and a replay runs it again rather than answer for it.
        outcome = "errored"
        exit_code = NOT_STARTABLE
        diff: Diff | None = None
        before = None
        try:
            # Once the start is recorded, its end is too, whatever happens from here; the
            # log comes first, as the end describes it.
            with path.open("wb") as out:
                # A stat on the loop, cheaper than a thread's round trip.
                if pgid_file.exists():  # noqa: ASYNC240
                    await asyncio.to_thread(stop_orphan, pgid_file)
                if step.diff and step.cwd:
                    locks = self.artifacts_dir / work_trees.LOCKS
                    before = await work_trees.snapshot(Path(step.cwd), locks)
                started = time.monotonic()  # the command's own time
                if streaming is None:
                    exit_code, outcome = await self._execute(step, out, pgid_file)
                else:
                    exit_code, outcome = await self._stream(step, out, pgid_file, streaming)
            if before is not None and step.cwd:
                patch = relative.parent / "patches" / f"{stage_slug(step.stage)}-{attempt}.patch"
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
            result = await finished(self.records.ended(step, ran, then))
        return Executed(result=result, outcome=outcome, attempt=attempt)

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


def stage_slug(stage: str) -> str:
    """A stage's name as a file name: its logs, patches and pgid file are named by it."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stage)[:80]


def failure(step: StepInput, exit_code: int, tail: list[str]) -> str:
    """Why a step failed, in words: the exit status and the last line it printed."""
    text = f"step {step.stage!r} exited with status {exit_code}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"{text}: {last}" if last else text
