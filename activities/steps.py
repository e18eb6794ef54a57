"""The step executor: the one activity that runs a command for any workflow family.

The command runs in its own process group, with its output going to an artifact file.
The activity heartbeats every second, which is also how a cancel reaches it; a cancel or a
timeout stops the whole group with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import workspaces
from activities.records import CarriesDecisions, write_carried
from activities.workspaces import Diff
from store import events, resources
from store.engine import Database
from store.models import Artifact

HEARTBEAT_S = 1.0
TAIL_BYTES = 64 * 1024
TAIL_LINE_CHARS = 500
# What a step inherits from the worker; everything else (database URLs, tokens) stays out.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "SHELL")
NOT_STARTABLE = 127


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


class Steps:
    """Bound to the worker's database and artifacts directory."""

    def __init__(self, db: Database, artifacts_dir: Path) -> None:
        self.db = db
        self.artifacts_dir = artifacts_dir

    @activity.defn(name="steps.run")
    async def run(self, step: StepInput) -> StepResult:
        attempt = activity.info().attempt
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", step.stage)[:80]
        relative = Path(step.resource_id) / f"{slug}-{attempt}-{uuid.uuid4().hex[:8]}.log"
        path = self.artifacts_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pgid_file = path.parent / f".{slug}.pgid"
        if pgid_file.exists():
            await asyncio.to_thread(stop_orphan, pgid_file)
        await self._started(step, attempt)
        before = await workspaces.snapshot(Path(step.cwd)) if step.diff and step.cwd else None
        started = time.monotonic()
        outcome = "failed"
        exit_code = NOT_STARTABLE
        try:
            with path.open("wb") as out:
                exit_code, outcome = await self._execute(step, out, pgid_file)
        except asyncio.CancelledError:
            outcome = "canceled"
            raise
        finally:
            duration_ms = int((time.monotonic() - started) * 1000)
            result = await asyncio.shield(
                self._record(step, relative, path, exit_code, outcome, duration_ms, attempt)
            )
        if before is not None and step.cwd:
            patch = relative.parent / "patches" / f"{slug}-{attempt}.patch"
            result.diff = await workspaces.changes(
                Path(step.cwd), before, self.artifacts_dir, patch
            )
        if outcome == "timed_out":
            raise ApplicationError(
                f"step {step.stage!r} timed out after {step.timeout_seconds} s",
                result.model_dump(),
                type="StepTimedOut",
                non_retryable=attempt > step.retries,
            )
        if exit_code != 0:
            # Attempts also count worker crashes, which the retry policy retries on its own.
            raise ApplicationError(
                failure(step, exit_code, result.tail),
                result.model_dump(),
                type="StepFailed",
                non_retryable=attempt > step.retries,
            )
        return result

    async def _execute(self, step: StepInput, out: BinaryIO, pgid_file: Path) -> tuple[int, str]:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ} | step.env
        try:
            process = await asyncio.create_subprocess_exec(
                *step.argv,
                cwd=step.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            out.write(f"pilothouse: command not found: {step.argv[0]!r}\n".encode())
            return NOT_STARTABLE, "failed"
        except (OSError, ValueError) as exc:
            out.write(f"pilothouse: cannot start {step.argv[0]!r}: {exc}\n".encode())
            return NOT_STARTABLE, "failed"
        # A worker killed mid-step leaves its group running; the next attempt stops it.
        await asyncio.to_thread(pgid_file.write_text, f"{process.pid} {start_time(process.pid)}")
        deadline = time.monotonic() + step.timeout_seconds if step.timeout_seconds else None
        try:
            while True:
                activity.heartbeat()
                try:
                    code = await asyncio.wait_for(process.wait(), HEARTBEAT_S)
                    return code, "succeeded" if code == 0 else "failed"
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        await asyncio.shield(stop_group(process, step.kill_grace_seconds))
                        return await process.wait(), "timed_out"
        except asyncio.CancelledError:
            await asyncio.shield(stop_group(process, step.kill_grace_seconds))
            raise
        finally:
            await asyncio.to_thread(pgid_file.unlink, True)

    async def _started(self, step: StepInput, attempt: int) -> None:
        async with self.db.session() as session:
            # The decision that let this stage start comes first in the log.
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
                payload={"stage": step.stage, "attempt": attempt, "argv": step.argv},
            )
            await session.commit()

    async def _record(
        self,
        step: StepInput,
        relative: Path,
        path: Path,
        exit_code: int,
        outcome: str,
        duration_ms: int,
        attempt: int,
    ) -> StepResult:
        size, checksum, tail = await asyncio.to_thread(describe_file, path, step.tail_lines)
        artifact = Artifact(
            resource_kind=step.resource_kind,
            resource_id=step.resource_id,
            stage=step.stage,
            kind="log",
            path=str(relative),
            size_bytes=size,
            checksum_sha256=checksum,
        )
        result = StepResult(
            exit_code=exit_code, artifact_id=artifact.id, tail=tail, duration_ms=duration_ms
        )
        async with self.db.session() as session:
            session.add(artifact)
            await events.append(
                session,
                step.resource_kind,
                step.resource_id,
                "step_finished",
                stage=step.stage,
                status=outcome,
                message=f"{step.stage}: {outcome} (exit {exit_code})",
                payload={**result.model_dump(), "attempt": attempt},
            )
            await session.commit()
        return result


def failure(step: StepInput, exit_code: int, tail: list[str]) -> str:
    """Why a step failed, in words: the exit status and the last line it printed."""
    text = f"step {step.stage!r} exited with status {exit_code}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"{text}: {last}" if last else text


async def stop_group(process: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after the grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    # The leader is gone; children that ignored SIGTERM may linger in the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def start_time(pid: int) -> str:
    """The kernel's start time of a process: with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):  # gone already: /proc answers ENOENT or ESRCH
        return "?"


def stop_orphan(pgid_file: Path) -> None:
    """Kill the process group an earlier attempt left behind, if it is still that group."""
    try:
        pid_text, started = pgid_file.read_text().split()
        pgid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return
    if start_time(pgid) == started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    pgid_file.unlink(missing_ok=True)


def describe_file(path: Path, tail_lines: int) -> tuple[int, str, list[str]]:
    """Size, SHA-256 and the last lines of a finished log (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    size = 0
    last = b""
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
            last = (last + chunk)[-TAIL_BYTES:]
    lines = last.decode(errors="replace").splitlines()[-tail_lines:] if tail_lines else []
    return size, digest.hexdigest(), [line[:TAIL_LINE_CHARS] for line in lines]
