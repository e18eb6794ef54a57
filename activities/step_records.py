"""What the step executor writes of a step: its start and its end (its log as an artifact)
in the resource's row, the event log and the step runs (`step_runs`).

A step's end is written before its activity says how it ended, also when it was canceled
(`finished`). In a series, the next step's start is written in the transaction of the end
before it (`Link`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from temporalio import activity

from activities import step_runs
from activities.records import CarriesDecisions, write_carried
from activities.step_logs import describe_log
from activities.work_trees import Diff
from settings import LIMITS
from store import resources
from store.engine import Database
from store.models import Artifact, StepRun
from store.writes import Writes, writing

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
    # The tokens the series may still spend (`step_series`): a step reporting more ends it.
    room: int | None = None
    started: bool = False
    earlier: StepRun | None = None  # what `started` would have answered

    def admits(self, before: StepResult) -> bool:
        """Whether the step before leaves the next one to run, by its reported tokens."""
        return self.room is None or reported_tokens(before.tail) <= self.room


class StepRecords:
    """Bound to the worker's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def started(
        self, step: StepInput, attempt: int, argv: list[str], key: str | None
    ) -> StepRun | None:
        """The start; for a step with a step-run key (local, or in a series) that ended
        before a replay or a retry, that end instead
        (nothing is written then, and nothing runs)."""
        async with writing(self.db) as writes:
            return await self._write_start(writes, step, attempt, argv, key)

    async def _write_start(
        self, writes: Writes, step: StepInput, attempt: int, argv: list[str], key: str | None
    ) -> StepRun | None:
        first = True
        if key is not None:
            begun = await step_runs.begin(writes.session, key, attempt, step.resource_id)
            if begun.earlier is not None:
                return begun.earlier
            first = begun.first
        # The decision that let this stage start comes first in the log; a local step
        # run again after a lost worker has written it already.
        if first:
            await write_carried(writes, step)
        writes.set_fields(
            step.resource_kind, step.resource_id, state=step.resource_state, stage=step.stage
        )
        writes.set_parts(step.resource_kind, step.resource_id, step.parts)
        writes.event(
            step.resource_kind,
            step.resource_id,
            "stage_started",
            stage=step.stage,
            status="running",
            message=f"{step.stage}: started (attempt {attempt})",
            payload={"stage": step.stage, "attempt": attempt, "argv": argv},
        )
        return None

    async def ended(self, step: StepInput, ran: Ran, then: Link | None) -> StepResult:
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
        async with writing(self.db) as writes:
            await resources.insert(writes.session, Artifact, artifact.model_dump())
            writes.event(
                step.resource_kind,
                step.resource_id,
                "step_finished",
                stage=step.stage,
                status=ran.outcome,
                message=f"{step.stage}: {ran.outcome} (exit {ran.exit_code})",
                payload={**result.model_dump(exclude={"diff"}), "attempt": ran.attempt},
            )
            if ran.key is not None:
                step_runs.end(
                    writes, ran.key, ran.attempt, ran.outcome, result.model_dump(mode="json")
                )
            # The next step's `begin` reads and writes its own key only, never this one's
            # held end.
            if then is not None and ran.outcome == "succeeded" and then.admits(result):
                key = step_runs.key(then.part, then.step.stage)
                then.earlier = await self._write_start(
                    writes, then.step, ran.attempt, then.step.argv, key
                )
                then.started = True
        return result

    async def abandon(self, link: Link) -> None:
        """End the step `link` started, which never ran: a cancel came between the record
        that started it and its run. Run it with `finished`."""
        attempt = activity.info().attempt
        stage = link.step.stage
        async with writing(self.db) as writes:
            writes.event(
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
                step_runs.end(writes, key, attempt, "canceled", {})


def last_json(tail: list[str]) -> dict[str, Any]:
    """The JSON object on a command's last printed line, if there is one: how a builder,
    an auditor or an agent step reports (`tokens_used`, `recommendation`, …)."""
    for line in reversed(tail):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
        return {}
    return {}


def reported_tokens(tail: list[str]) -> int:
    """The `tokens_used` a command reported on its last line; 0 when none, or not a count."""
    value = last_json(tail).get("tokens_used")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return min(max(0, int(value)), LIMITS.max_int)
    except OverflowError:  # an infinite count: over any budget
        return LIMITS.max_int if float(value) > 0 else 0
    except ValueError:
        return 0


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
