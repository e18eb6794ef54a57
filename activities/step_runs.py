"""What each attempt of a local step (or a step of a series) came to, so that a step that
finished never runs again.

A local activity's result reaches Temporal's history only when its workflow task completes.
After a worker is lost mid-task, the replay runs the task's local activities again: the
step executor finds the attempts that finished here and answers with their results. A
series of steps in one ordinary activity (a job's stages, a run's builder and auditor) is
kept the same way, for its retry after a lost worker. A lone step in an ordinary activity
needs none of this; Temporal records its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from store import resources
from store.models import StepRun, utcnow
from store.writes import Writes

FINAL = ("succeeded", "failed", "timed_out", "idle")


def key(part: int | None = None, stage: str = "") -> str | None:
    """The running local activity, named for good (a replay gives it the same sequence
    number in the same workflow run); in a series that the activity runs, the step's
    `part` (its place) and `stage` too, so that a step is never answered with another's
    end. None for a lone step in an ordinary activity, whose end Temporal records; a
    series in one is named too (its id stays across attempts), as a retry after a lost
    worker must not run the steps that finished before it again."""
    info = activity.info()
    if not info.is_local and part is None:
        return None
    name = f"{info.workflow_run_id}/{info.activity_id}"
    return name if part is None else f"{name}/{part}/{stage}"


@dataclass
class Begun:
    earlier: StepRun | None  # an attempt that ran to its end: answer with it, run nothing
    first: bool  # no attempt was seen before: the step's carried facts are still to write


async def begin(session: AsyncSession, key: str, attempt: int, resource_id: str) -> Begun:
    """Note the attempt as started, in the caller's transaction, unless the step succeeded
    before or this very attempt ran to its end before the replay."""
    keys = ("key", "attempt")
    started = {
        "key": key,
        "attempt": attempt,
        "resource_id": resource_id,
        "outcome": "started",
        "result": None,
        "created_at": utcnow(),
    }
    if attempt == 1 and await resources.insert_new(session, StepRun, keys, started):
        # Attempts count from 1, so a first attempt that is new is the step's first run:
        # one statement on the way of nearly every step.
        return Begun(earlier=None, first=True)
    rows = (await session.exec(select(StepRun).where(col(StepRun.key) == key))).all()
    for row in rows:
        if row.outcome == "succeeded" or (row.attempt == attempt and row.outcome in FINAL):
            return Begun(earlier=row, first=False)
    if attempt != 1:
        await resources.insert_new(session, StepRun, keys, started)
    # A local retry after a long backoff is a new local activity, with a key of its own:
    # only its first attempt writes what the step carries. An ordinary activity keeps its
    # key: a retry that finds nothing under it writes what the attempts before did not.
    first = attempt == 1 or not activity.info().is_local
    return Begun(earlier=None, first=first and not rows)


def end(writes: Writes, key: str, attempt: int, outcome: str, result: dict[str, Any]) -> None:
    """In the transaction of the step's end record, held with its other writes until they
    are flushed: a read of this key before then would still find the step started."""
    writes.update(StepRun, {"key": key, "attempt": attempt}, {"outcome": outcome, "result": result})


async def forget(session: AsyncSession, resource_id: str) -> None:
    """A resource that ended replays nothing: its step runs go with its end."""
    await session.exec(
        sa.delete(resources.core(StepRun)).where(sa.column("resource_id") == resource_id)
    )
