"""Consecutive short steps in one local activity: `true` forty times costs the commands and
their records, not forty trips through the workflow.

Each step runs on the step executor as it would alone, with its place in the series in
its step-run key, and its end is committed before the next starts: a replay after a lost
worker answers the steps that finished from there and runs only the one that was running.
The next step's start is written in the transaction that records the end of the one before
(`steps.Link`): one commit a step. A failing step ends the series; the steps after it do
not run. The series also ends after `slice_seconds` of work, so that its workflow task
completes and a cancel or an Update's answer waits no longer than behind one short step.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field
from temporalio import activity

from activities.records import CarriesDecisions
from activities.steps import Link, StepInput, StepResult, Steps


class SeriesInput(CarriesDecisions):
    steps: list[StepInput] = Field(min_length=1)
    slice_seconds: float = Field(1.0, gt=0)


class SeriesResult(BaseModel):
    results: list[StepResult] = Field(description="One per step that ran, in order")
    error: str | None = Field(None, description="Why the last one failed, if it did")


class StepSeries:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    @activity.defn(name="steps.run_series")
    async def run(self, series: SeriesInput) -> SeriesResult:
        first, *_ = series.steps
        # What the workflow carried is written with the first step's start.
        first.decisions, first.facts = series.decisions, series.facts
        results: list[StepResult] = []
        until = time.monotonic() + series.slice_seconds
        begun: Link | None = None
        for part, step in enumerate(series.steps):
            following = series.steps[part + 1 : part + 2]
            then = Link(following[0], part + 1, until) if following else None
            done = await self.steps.execute(step, part=part, begun=begun, then=then)
            results.append(done.result)
            error = done.error(step)
            if error is not None:
                return SeriesResult(results=results, error=error.message)
            if then is None or (not then.started and time.monotonic() >= until):
                break  # the last step, or the slice is used up
            # Started already by the record of this one, unless this one was answered from
            # an earlier run (a replay): then the next starts on its own.
            begun = then
        return SeriesResult(results=results)
