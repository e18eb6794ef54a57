"""How a workflow runs a command on the step executor (`steps.run`): one set of timeouts,
retries and cancellation for jobs' stages and runs' builders and auditors.

A step that declares a timeout of at most `SHORT_STEP_S` runs as a local activity: in the
worker that runs its workflow, inside the workflow task, with no trip through the server's
queues (about 10 ms a `true` step with its records, against about 20 ms as an ordinary
activity on the tuned dev server, 50 ms on one with Temporal's defaults).
The step executor keeps what each local attempt came to (`activities/step_runs.py`), so a
replay after a lost worker never runs a finished step again. Longer or open-ended steps
stay ordinary activities: the Temporal UI shows them pending with their heartbeats, and a
cancel or an Update reaches the workflow while they run, where a local activity holds the
workflow task for up to 4 s at a time. For the same reason a step that starts while an
Update is answered, or in the workflow task that carries its answer, is an ordinary
activity: the answer is not held behind it (`Gated.may_hold_task`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.steps import StepInput, StepResult
    from workflows.gate import WORKER_LOSSES, Gated

SHORT_STEP_S = 10.0
# While a local activity runs, the worker renews its workflow task at 80% of this timeout,
# and only then can a cancel or an Update reach the workflow: 4 s with this, 8 s with
# Temporal's 10 s. Jobs and runs start with it.
SHORT_STEP_TASK_TIMEOUT = timedelta(seconds=5)
# Histories from before short steps ran locally replay with ordinary activities.
LOCAL_STEPS = "short-steps-run-locally"


def is_short(step: StepInput) -> bool:
    return step.timeout_seconds is not None and step.timeout_seconds <= SHORT_STEP_S


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
    options: dict[str, Any] = {
        "result_type": StepResult,
        "start_to_close_timeout": timedelta(seconds=limit),
        # The executor makes a failing command non-retryable once its own retries are
        # spent; the extra attempts here are for lost workers.
        "retry_policy": RetryPolicy(
            maximum_attempts=step.retries + 1 + WORKER_LOSSES,
            initial_interval=timedelta(seconds=1),
        ),
        "cancellation_type": workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        # The Temporal UI names each step's activity or marker by its stage.
        "summary": step.stage,
    }
    if is_short(step) and owner.may_hold_task() and workflow.patched(LOCAL_STEPS):
        result: StepResult = await owner.carrying("steps.run", step, local=True, **options)
    else:
        options["heartbeat_timeout"] = timedelta(seconds=heartbeat_timeout_s)
        result = await owner.carrying("steps.run", step, **options)
    return result
