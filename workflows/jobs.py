"""JobWorkflow: a pipeline's stages in order, each followed by its gate.

Approve goes on; reject pauses the job at that gate; resume (with a params patch) runs
the rejected stage again and opens its gate again; cancel kills the running step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.records import CarriesDecisions, Transition
    from activities.step_records import StepInput
    from activities.step_series import SeriesInput
    from strict import explain
    from workflows.gate import Gated, cause
    from workflows.job_spec import (
        JobFailed,
        JobInput,
        JobOutcome,
        JobPlace,
        JobSpec,
        JobState,
        ResumeIn,
        ResumeOut,
        StageSpec,
        step_env,
    )
    from workflows.step_calls import run_series, run_step, series_length

# Failed jobs end their workflow failed (before, it completed with a `failed` outcome).
FAILED_WORKFLOWS = "failed-jobs-fail-their-workflow"
# Room a step's activity leaves after its command's timeout, for the kill and the record.
MARGIN_S = 30
# How long a stage without a timeout may run.
OPEN_ENDED_S = 7 * 24 * 3600


@workflow.defn(name="JobWorkflow")
class JobWorkflow(Gated):
    kind = "job"
    waiting_state = "needs_approval"

    @workflow.init
    def __init__(self, job: JobInput) -> None:
        super().__init__()
        self.params = dict(job.params)
        self.state: JobState = "queued"
        self.stage: str | None = None
        self._resume: ResumeIn | None = None
        self._ended = False
        self._series: str | None = None  # the stages of the series that runs

    @workflow.run
    async def run(self, job: JobInput) -> JobOutcome:
        try:
            outcome = await self._run(job)
            await workflow.wait_condition(workflow.all_handlers_finished)
            return outcome
        except asyncio.CancelledError:
            await self._canceled()
            raise
        except Exception as err:
            if is_cancelled_exception(err):
                await self._canceled()
                raise
            if self._ended or isinstance(err, workflow.NondeterminismError):
                raise
            # Whatever the workflow cannot handle ends the job failed, never a workflow task
            # that fails forever with the job stuck in its last state.
            return await self._fail(f"internal error: {type(err).__name__}: {err}", "InternalError")

    async def _canceled(self) -> None:
        # The step's process group is gone (WAIT_CANCELLATION_COMPLETED); say so, then end
        # as canceled so the Temporal UI agrees with the database.
        await self._transition("canceled", "job_canceled", "job canceled", final=True)

    async def _run(self, job: JobInput) -> JobOutcome:
        try:
            spec = JobSpec.model_validate({"stages": job.stages, "params": job.params})
        except ValidationError as exc:
            return await self._fail(f"invalid job: {explain(exc)}", "InvalidJob")
        place = job.place or JobPlace(index=0, openings={})
        index, openings = place.index, dict(place.openings)
        while index < len(spec.stages):
            if workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new(job, JobPlace(index=index, openings=openings))
            # The stages up to the next gate may run as one series (`run_series`).
            end = next(
                (i + 1 for i in range(index, len(spec.stages)) if spec.stages[i].gated),
                len(spec.stages),
            )
            ran, error = await self._run_stages(job, spec.stages[index:end])
            index += ran - 1
            stage = spec.stages[index]
            if error is not None:
                return await self._fail(error, "StageFailed")
            gate = stage.gate
            if gate is None or not stage.gated:
                index += 1
                continue
            openings[stage.name] = openings.get(stage.name, 0) + 1
            self._set_state("needs_approval", stage.name)
            result = await self.run_gate(
                stage.name, gate, openings[stage.name], job.auto_approve_allowed
            )
            if result.state == "approved":
                index += 1
            elif result.state == "failed":
                return await self._fail(f"gate {result.gate_id}: {result.reason}", "GateFailed")
            else:
                await self._transition(
                    "paused",
                    "job_paused",
                    f"{stage.name}: rejected: {result.reason or ''}",
                    payload={"gate_id": result.gate_id, "reason": result.reason},
                )
                await workflow.wait_condition(lambda: self._resume is not None)
                assert self._resume is not None
                resume, self._resume = self._resume, None
                if resume.params is not None:
                    self.params = dict(resume.params)
                await self._transition(
                    "running",
                    "job_resumed",
                    f"{stage.name}: resumed by {resume.by}",
                    payload={"by": resume.by, "params": self.params},
                    changes={"params": self.params},
                )
        self.stage = None
        await self._transition("completed", "job_completed", "job completed", final=True)
        return JobOutcome(state="completed", stage=None)

    async def _continue_as_new(self, job: JobInput, place: JobPlace) -> None:
        """Go on in a new run before the history reaches Temporal's limit, with the job's
        place and params; decisions not yet recorded are recorded first."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self.notices_done()
        if self._unrecorded or self._deferred:
            await self.record("records.decisions", CarriesDecisions())
        workflow.continue_as_new(job.model_copy(update={"params": self.params, "place": place}))

    async def _run_stages(self, job: JobInput, stages: list[StageSpec]) -> tuple[int, str | None]:
        """Run the first of `stages`, or as many as may run in one series; how many ran,
        and the error text of the last one when it failed."""
        steps = [self._step(job, stage) for stage in stages]
        count = series_length(self, steps)
        first = stages[0].name
        if not count:
            self._set_state("running", first)
            try:
                await run_step(
                    self,
                    steps[0],
                    heartbeat_timeout_s=job.heartbeat_timeout_seconds,
                    open_ended_s=OPEN_ENDED_S,
                    margin_s=MARGIN_S,
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                return 1, f"{first}: {cause(err)}"
            return 1, None
        # Which stage of the series runs, the step executor says (the row, the events);
        # a transition meanwhile (a cancel) leaves the row's stage as it set it.
        self._series = f"{first} … {stages[count - 1].name}"
        self._set_state("running", None, shown=self._series)
        try:
            series = await run_series(
                self,
                SeriesInput(steps=steps[:count]),
                heartbeat_timeout_s=job.heartbeat_timeout_seconds,
                open_ended_s=OPEN_ENDED_S,
                margin_s=MARGIN_S,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            return 1, f"{self._series}: {cause(err)}"
        self._series = None
        stage = stages[series.ran - 1].name
        self._set_state("running", stage)
        return series.ran, None if series.error is None else f"{stage}: {series.error}"

    def _step(self, job: JobInput, stage: StageSpec) -> StepInput:
        return StepInput(
            resource_kind=self.kind,
            resource_id=job.job_id,
            stage=stage.name,
            argv=stage.run,
            cwd=stage.cwd,
            env=step_env(stage, self.params),
            timeout_seconds=stage.timeout_seconds,
            retries=stage.retries,
            kill_grace_seconds=job.kill_grace_seconds,
        )

    def _set_state(self, state: JobState, stage: str | None, *, shown: str | None = None) -> None:
        """`shown`: the stage as the Temporal UI's details say it (a series: its range)."""
        self.state, self.stage = state, stage
        self.show_state(state)
        workflow.set_current_details(f"**State** {state}\n\n**Stage** {shown or stage or '-'}")

    async def _fail(self, error: str, kind: str) -> JobOutcome:
        """Record the job failed, then end the workflow failed with `kind` as its type."""
        await self._transition(
            "failed", "job_failed", error, payload={"error": error}, error=error, final=True
        )
        self._ended = True
        if workflow.patched(FAILED_WORKFLOWS):
            raise JobFailed(error, type=kind, non_retryable=True)
        return JobOutcome(state="failed", stage=self.stage, error=error)

    async def _transition(
        self,
        state: JobState,
        event_type: str,
        message: str,
        *,
        payload: dict[str, Any] | None = None,
        error: str | None = None,
        final: bool = False,
        changes: dict[str, Any] | None = None,
    ) -> None:
        self._set_state(state, self.stage)
        await self.record(
            "records.transition",
            Transition(
                resource_kind=self.kind,
                resource_id=workflow.info().workflow_id,
                state=state,
                stage=self.stage,
                keep_stage=self._series is not None,
                error=error,
                event_type=event_type,
                message=message,
                payload={
                    "stage": self.stage,
                    "status": state,
                    **({"series": self._series} if self._series else {}),
                    **(payload or {}),
                },
                final=final,
                changes=changes or {},
            ),
        )

    @workflow.update
    async def resume(self, request: ResumeIn) -> ResumeOut:
        with self.answering():
            self._check_paused()
            self._resume = request
            return ResumeOut(state="running", stage=self.stage)

    @resume.validator
    def _validate_resume(self, request: ResumeIn) -> None:
        self._check_paused()

    def _check_paused(self) -> None:
        if self.state != "paused" or self._resume is not None:
            raise ApplicationError(
                f"job is {self.state}, not paused", type="JOB_NOT_PAUSED", non_retryable=True
            )
