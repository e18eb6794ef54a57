"""Consecutive steps in one activity (a local one when all are short, an ordinary one with
heartbeats otherwise): `true` forty times costs the commands and their records, not forty
trips through the workflow.

Each step runs on the step executor as it would alone, with its place in the series in
its step-run key, and its end is committed before the next starts: a replay after a lost
worker (or the retry of an ordinary activity) answers the steps that finished from there
and runs only the one that was running. The workflow decides where a series ends (at the
next gate, or the next step with retries of its own), never the clock, so that a replay's
series cover the same steps as the first run's. The next step's start is written in the
transaction that records the end of the one before (`steps.Link`): one commit a step. A
failing step ends the series; the steps after it do not run.

A run's builder and auditor run as a series too: the auditor learns what the builder
changed (`files_changed_env`), and a builder that reports more tokens than the run has
left ends the series before the auditor, so the budget gate comes first, as it does when
they run apart.
"""

from __future__ import annotations

import asyncio
import json

from pydantic import BaseModel, Field
from temporalio import activity

from activities.records import CarriesDecisions
from activities.step_records import Link, StepInput, StepResult, finished, reported_tokens
from activities.steps import Steps


class SeriesInput(CarriesDecisions):
    steps: list[StepInput] = Field(min_length=1)
    with_results: bool = Field(False, description="Answer with each step's result")
    files_changed_env: str | None = Field(
        None,
        description="The variable that tells each step, as a JSON list, the files the last "
        "step with `diff` changed (unless the step's own env sets it)",
    )
    token_room: int | None = Field(
        None, ge=0, description="The series ends once its steps report more tokens than this"
    )


class SeriesResult(BaseModel):
    """Small on purpose: it is one marker or event in the workflow's history. Each step's
    tail and log are in the event log and the artifacts; `results` only when asked."""

    ran: int = Field(description="How many steps ran, the failing one included")
    error: str | None = Field(None, description="Why the last one failed, if it did")
    error_type: str | None = Field(None, description="StepFailed or StepTimedOut")
    results: list[StepResult] = Field(default_factory=list)


class StepSeries:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    @activity.defn(name="steps.run_series")
    async def run(self, series: SeriesInput) -> SeriesResult:
        first, *_ = series.steps
        # What the workflow carried is written with the first step's start.
        first.decisions, first.facts = series.decisions, series.facts
        begun: Link | None = None
        results: list[StepResult] = []
        changed: list[str] | None = None
        spent = 0
        for part, step in enumerate(series.steps):
            name = series.files_changed_env
            if name is not None and changed is not None:
                step = step.model_copy(update={"env": {name: json.dumps(changed)} | step.env})
            following = series.steps[part + 1 : part + 2]
            room = None if series.token_room is None else series.token_room - spent
            then = Link(following[0], part + 1, room) if following else None
            try:
                done = await self.steps.execute(step, part=part, begun=begun, then=then)
            except asyncio.CancelledError:
                if then is not None and then.started and then.earlier is None:
                    # The cancel came between this step's record and the next one's run.
                    await finished(self.steps.records.abandon(then))
                raise
            if series.with_results:
                results.append(done.result)
            error = done.error(step)
            if error is not None:
                return SeriesResult(
                    ran=part + 1, error=error.message, error_type=error.type, results=results
                )
            if step.diff:
                changed = done.result.diff.files_changed if done.result.diff else []
            if then is not None and not then.admits(done.result):
                return SeriesResult(ran=part + 1, results=results)
            spent += reported_tokens(done.result.tail)
            # Started already by this one's record, unless this one was answered from an
            # earlier run (a replay): then the next starts on its own.
            begun = then
        return SeriesResult(ran=len(series.steps), results=results)
