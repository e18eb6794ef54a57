"""How a workflow runs commands on the step executor (`steps.run`, `steps.run_series`): one
set of timeouts, retries and cancellation for jobs' stages and runs' builders and auditors.

A step that declares a timeout of at most `SHORT_STEP_S` runs as a local activity: in the
worker that runs its workflow, inside the workflow task, with no trip through the server's
queues (about 5 ms a `true` step with its records, against about 15 ms as an ordinary
activity on the tuned dev server, 50 ms on one with Temporal's defaults).
The step executor keeps what each local attempt came to (`activities/step_runs.py`), so a
replay after a lost worker never runs a finished step again. Longer or open-ended steps
run in ordinary activities: the Temporal UI shows them pending with their heartbeats, and
a cancel or an Update reaches the workflow while they run, where a local activity holds
the workflow task for up to 4 s at a time. For the same reason a step that starts while an
Update is answered, or in the workflow task that carries its answer, is an ordinary
activity: the answer is not held behind it (`Gated.may_hold_task`).
Consecutive steps with no retries of their own run as one series, in one activity
(`activities/step_series.py`): a local one when all are short (a `true` step then costs
about 3.5 ms), an ordinary one with heartbeats otherwise, one trip through the server's
queues for all of them. A run's builder and auditor commands run as one series too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.step_records import StepInput, StepResult
    from activities.step_series import SeriesInput, SeriesResult
    from workflows.gate import WORKER_LOSSES, Gated

SHORT_STEP_S = 10.0
# While a local activity runs, the worker renews its workflow task at 80% of this timeout,
# and only then can a cancel or an Update reach the workflow: 4 s with this, 8 s with
# Temporal's 10 s. Jobs and runs start with it.
SHORT_STEP_TASK_TIMEOUT = timedelta(seconds=5)
# Histories from before short steps ran locally replay with ordinary activities.
LOCAL_STEPS = "short-steps-run-locally"
SERIES = "short-steps-run-in-series"
# Histories from before other steps ran as series replay with an activity a step.
ORDINARY_SERIES = "steps-run-in-series-in-ordinary-activities"
# What the steps of an ordinary series may weigh together: its input goes to Temporal's
# server, which warns past 512 KiB and refuses past 2 MiB (a job's steps each carry its
# params twice). A local activity's input stays in the worker. The weight decides where a
# series ends, as the workflow replays too: a change to what a step's input holds can
# move that end for a history near the bound, and wants a patch of its own.
SERIES_BYTES = 256 * 1024
# The steps of a series whose worker losses add to its attempts (minutes of backoff).
MAX_LOST_STEPS = 5


def is_short(step: StepInput) -> bool:
    return step.timeout_seconds is not None and step.timeout_seconds <= SHORT_STEP_S


def _options(limit_s: float, attempts: int, summary: str) -> dict[str, Any]:
    return {
        # The Temporal UI names each step's activity or marker by its stage(s).
        "summary": summary,
        "start_to_close_timeout": timedelta(seconds=limit_s),
        "retry_policy": RetryPolicy(
            maximum_attempts=attempts, initial_interval=timedelta(seconds=1)
        ),
        "cancellation_type": workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }


async def run_step(
    owner: Gated,
    step: StepInput,
    *,
    heartbeat_timeout_s: float,
    open_ended_s: float,
    margin_s: float,
) -> StepResult:
    """Run `step`, carrying what `owner` has to record. A step without a timeout may run
    `open_ended_s`; the activity's own timeout leaves room for the kill and the record."""
    limit = (step.timeout_seconds or open_ended_s) + step.kill_grace_seconds + margin_s
    # The executor makes a failing command non-retryable once its own retries are spent;
    # the extra attempts here are for lost workers.
    options = _options(limit, step.retries + 1 + WORKER_LOSSES, step.stage)
    if is_short(step) and owner.may_hold_task() and workflow.patched(LOCAL_STEPS):
        result: StepResult = await owner.carrying(
            "steps.run", step, local=True, result_type=StepResult, **options
        )
    else:
        options["heartbeat_timeout"] = timedelta(seconds=heartbeat_timeout_s)
        result = await owner.carrying("steps.run", step, result_type=StepResult, **options)
    return result


def series_length(owner: Gated, steps: list[StepInput]) -> int:
    """How many of the leading `steps` run as one series (`run_series`): those with no
    retries of their own (a step's retries are a retried activity); 0 when fewer than two
    are, and the caller runs the first alone. Short ones that may hold the workflow task
    run in a local activity; with any other among them, all run in an ordinary one."""
    plain = 0
    while plain < len(steps) and steps[plain].retries == 0:
        plain += 1
    short = 0
    while short < plain and is_short(steps[short]):
        short += 1
    hold = owner.may_hold_task()
    if plain >= 2 and (short < plain or not hold):
        fit = _within_bytes(steps[:plain])
        if fit >= 2 and workflow.patched(ORDINARY_SERIES):
            return fit
    if short < 2 or not hold or not workflow.patched(SERIES):
        return 0
    return short


def _within_bytes(steps: list[StepInput]) -> int:
    """How many of the leading `steps` weigh no more than `SERIES_BYTES` together."""
    total = 0
    for count, step in enumerate(steps):
        total += len(step.model_dump_json().encode())
        if total > SERIES_BYTES:
            return count
    return len(steps)


async def run_series(
    owner: Gated,
    series: SeriesInput,
    *,
    heartbeat_timeout_s: float,
    open_ended_s: float,
    margin_s: float,
) -> SeriesResult:
    """Run `series` in one activity, carrying what `owner` has to record: a local one when
    every step is short (as `series_length` chooses them), an ordinary one with heartbeats
    otherwise. While a local one runs, a cancel or an Update reaches the workflow when the
    worker renews the workflow task (every 4 s), as with consecutive short steps."""
    steps = series.steps
    limit = sum((s.timeout_seconds or open_ended_s) + s.kill_grace_seconds for s in steps)
    local = all(is_short(s) for s in steps) and owner.may_hold_task()
    shortness = "short steps" if local else "steps"
    summary = f"{steps[0].stage} … {steps[-1].stage} ({len(steps)} {shortness})"
    # Each step may lose its worker as a step alone may, without failing the others; up to
    # a point, as an error of Pilothouse's own (a database away) is retried as often.
    losses = WORKER_LOSSES * min(len(steps), MAX_LOST_STEPS)
    options = _options(limit + margin_s, 1 + losses, summary)
    if not local:
        options["heartbeat_timeout"] = timedelta(seconds=heartbeat_timeout_s)
    result: SeriesResult = await owner.carrying(
        "steps.run_series", series, local=local, result_type=SeriesResult, **options
    )
    return result
