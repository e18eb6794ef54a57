"""Consecutive short steps in one local activity: `true` forty times costs the commands and
their records, not forty trips through the workflow.

Each step runs on the step executor as it would alone, with its place in the series in
its step-run key, and its end is committed before the next starts: a replay after a lost
worker answers the steps that finished from there and runs only the one that was running.
The workflow decides where a series ends (at the next gate, or the next step that is not
short), never the clock, so that a replay's series cover the same steps as the first run's.
The next step's start is written in the transaction that records the end of the one before
(`steps.Link`): one commit a step. A failing step ends the series; the steps after it do
not run.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field
from temporalio import activity

from activities.records import CarriesDecisions
from activities.step_records import Link, StepInput, finished
from activities.steps import Steps


class SeriesInput(CarriesDecisions):
    steps: list[StepInput] = Field(min_length=1)


class SeriesResult(BaseModel):
    """Small on purpose: it is one marker in the workflow's history. Each step's tail and
    log are in the event log and the artifacts."""

    ran: int = Field(description="How many steps ran, the failing one included")
    error: str | None = Field(None, description="Why the last one failed, if it did")


class StepSeries:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    @activity.defn(name="steps.run_series")
    async def run(self, series: SeriesInput) -> SeriesResult:
        first, *_ = series.steps
        # What the workflow carried is written with the first step's start.
        first.decisions, first.facts = series.decisions, series.facts
        begun: Link | None = None
        for part, step in enumerate(series.steps):
            following = series.steps[part + 1 : part + 2]
            then = Link(following[0], part + 1) if following else None
            try:
                done = await self.steps.execute(step, part=part, begun=begun, then=then)
            except asyncio.CancelledError:
                if then is not None and then.started and then.earlier is None:
                    # The cancel came between this step's record and the next one's run.
                    await finished(self.steps.records.abandon(then))
                raise
            error = done.error(step)
            if error is not None:
                return SeriesResult(ran=part + 1, error=error.message)
            # Started already by this one's record, unless this one was answered from an
            # earlier run (a replay): then the next starts on its own.
            begun = then
        return SeriesResult(ran=len(series.steps))
