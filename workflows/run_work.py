"""The work of a run's phases, under `RunWorkflow`: builders and auditors as commands on
the step executor or as outside executors posting to the `phase` Update, and the one way
the run records what happens (a transition, maybe deferred to the next activity).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.records import IssueFact, Transition
    from activities.step_records import StepInput, StepResult, last_json, reported_tokens
    from activities.step_series import SeriesInput
    from workflows.gate import Gated, cause, refuse
    from workflows.run_results import (
        AuditorResult,
        BuilderResult,
        PhaseAnswer,
        PhaseCall,
        PhaseState,
    )
    from workflows.run_spec import CommandExecutor, PhaseSpec
    from workflows.step_calls import run_series, run_step

DONE = ("COMPLETE", "FAILED", "SKIPPED")
# Histories from before a phase's builder and auditor commands ran as one series replay
# with a step each.
PHASE_SERIES = "phase-builder-and-auditor-in-one-series"
FILES_CHANGED = "PILOTHOUSE_FILES_CHANGED"
TIMED_OUT = "StepTimedOut"  # the type of a timed-out step's failure (`steps.Executed`)
OPEN_ENDED_S = 24 * 3600
MARGIN_S = 60


class RunInput(BaseModel):
    """Loosely typed on purpose: `spec` is checked as a `RunSpec` in the workflow."""

    run_id: str
    spec: dict[str, Any]
    auto_approve_allowed: bool = True
    heartbeat_timeout_seconds: float = 5
    kill_grace_seconds: float = 15


@dataclass
class Audit:
    recommendation: Literal["approve", "revise", "escalate"] = "approve"
    notes: str = ""
    issues: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0


@dataclass
class Phase:
    """One phase inside the workflow: its state, and what it waits for from outside."""

    spec: PhaseSpec
    # No other phase runs meanwhile (its tier is not `parallel`): the tokens the run has
    # left stay as they were when its builder started.
    alone: bool = True
    state: PhaseState = "QUEUED"
    awaiting: Literal["builder", "auditor"] | None = None
    builder: BuilderResult | None = None
    auditor: AuditorResult | None = None
    openings: int = 0
    tokens: int = 0
    # The auditor command's step, when it ran in one series with the builder's: its
    # result, or why it failed.
    audited: StepResult | str | None = None


class PhaseWork(Gated):
    """Builders, auditors and recording, for `RunWorkflow` to put in order."""

    kind = "run"

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.phases: dict[str, Phase] = {}
        self.tokens = 0
        self.cap = 0
        self.workdir = ""
        self._ending = False  # set as the run's end is recorded: executors' calls refused
        self._ended = False

    async def _build(
        self, run: RunInput, phase: Phase, attempt: int, issues: list[dict[str, Any]]
    ) -> dict[str, Any] | str:
        """What the builder changed (`files_changed`, `lines_added`, `lines_removed`,
        `tokens_used`, `patch_path`), or why it failed."""
        spec = phase.spec
        part = f"phase:{spec.phase_id}"
        if isinstance(spec.builder, CommandExecutor):
            env = {
                "PILOTHOUSE_RUN_ID": self.run_id,
                "PILOTHOUSE_PHASE_ID": spec.phase_id,
                "PILOTHOUSE_ATTEMPT": str(attempt),
                "PILOTHOUSE_PHASE": spec.model_dump_json(
                    include={"name", "description", "task_category", "complexity", "scope"}
                ),
                "PILOTHOUSE_AUDITOR_ISSUES": json.dumps(issues),
            }
            builder = self._step_input(
                run,
                spec,
                "builder",
                spec.builder,
                env,
                diff=True,
                parts={part: {"state": "EXECUTING", "builder_attempts": attempt}},
            )
            # Only a phase that runs alone: the series ends before the auditor by the
            # tokens left when it started, which other phases would spend meanwhile.
            if (
                isinstance(spec.auditor, CommandExecutor)
                and phase.alone
                and workflow.patched(PHASE_SERIES)
            ):
                auditor = self._step_input(
                    run,
                    spec,
                    "auditor",
                    spec.auditor,
                    self._auditor_env(spec, attempt),
                    parts={part: {"auditor_attempts": attempt}},
                )
                step = await self._series(run, phase, builder, auditor)
            else:
                step = await self._step(run, builder)
            if isinstance(step, str):
                return step
            if step.exit_code != 0:
                last = next((line for line in reversed(step.tail) if line.strip()), "")
                return f"the builder exited with status {step.exit_code}: {last}".rstrip(": ")
            diff = step.diff.model_dump() if step.diff else {}
            built = {
                "files_changed": diff.get("files_changed", []),
                "lines_added": diff.get("lines_added", 0),
                "lines_removed": diff.get("lines_removed", 0),
                "patch_path": diff.get("patch_path"),
                "tokens_used": reported_tokens(step.tail),
            }
        else:
            # Taken from now on: a result posted as soon as the event below is read must
            # not find the phase refusing it.
            self._expect(phase, "builder")
            await self._record(
                "builder_awaited",
                f"{spec.phase_id}: waiting for the builder's result (attempt {attempt})",
                state="PHASE_EXECUTION",
                phase=spec.phase_id,
                parts={part: {"state": "EXECUTING", "builder_attempts": attempt}},
                payload={"attempt": attempt, "auditor_issues": issues},
            )
            result = await self._await(phase, "builder", spec.builder.timeout_seconds)
            if result is None:
                return f"no builder result within {spec.builder.timeout_seconds:g} s"
            assert isinstance(result, BuilderResult)
            if result.status == "failed":
                return f"the builder failed: {result.notes or 'no notes'}"
            built = {
                "files_changed": list(result.files_changed),
                "lines_added": result.lines_added,
                "lines_removed": result.lines_removed,
                "patch_path": None,
                "tokens_used": result.tokens_used,
                "needs_review": result.status == "needs_review",
            }
        await self._record(
            "builder_finished",
            f"{spec.phase_id}: built, {len(built['files_changed'])} files changed "
            f"(+{built['lines_added']} -{built['lines_removed']})",
            phase=spec.phase_id,
            parts={
                part: {
                    "files_changed": built["files_changed"][:1000],
                    "lines_added": built["lines_added"],
                    "lines_removed": built["lines_removed"],
                    "tokens_used": self._phase_tokens(spec.phase_id, built["tokens_used"]),
                }
            },
            payload=built | {"attempt": attempt},
            defer=True,
        )
        return built

    async def _audit(
        self, run: RunInput, phase: Phase, attempt: int, built: dict[str, Any]
    ) -> Audit:
        spec = phase.spec
        auditor = spec.auditor
        part = f"phase:{spec.phase_id}"
        if auditor is None:
            return Audit()
        if isinstance(auditor, CommandExecutor):
            step: StepResult | str | None = phase.audited
            phase.audited = None
            if step is None:
                env = self._auditor_env(spec, attempt) | {
                    FILES_CHANGED: json.dumps(built["files_changed"])
                }
                parts = {part: {"auditor_attempts": attempt}}
                step = await self._step(
                    run, self._step_input(run, spec, "auditor", auditor, env, parts=parts)
                )
            passed = isinstance(step, StepResult) and step.exit_code == 0
            tail = step.tail if isinstance(step, StepResult) else [step]
            report = last_json(tail)
            # Exit 0 approves, anything else asks for a revision, unless the last line says.
            recommendation: Literal["approve", "revise", "escalate"] = (
                "approve" if passed else "revise"
            )
            if report.get("recommendation") in ("approve", "revise", "escalate"):
                recommendation = report["recommendation"]
            audit = Audit(
                recommendation=recommendation,
                notes=str(report.get("review_notes", "") or ("\n".join(tail[-5:]))),
                issues=list(report.get("issues_found", []) or []),
                tokens=reported_tokens(tail),
            )
        else:
            self._expect(phase, "auditor")
            await self._record(
                "auditor_awaited",
                f"{spec.phase_id}: waiting for the auditor's result",
                phase=spec.phase_id,
                parts={part: {"auditor_attempts": attempt}},
            )
            result = await self._await(phase, "auditor", auditor.timeout_seconds)
            if result is None:
                audit = Audit(
                    recommendation="escalate",
                    notes=f"no auditor result within {auditor.timeout_seconds:g} s",
                )
            else:
                assert isinstance(result, AuditorResult)
                audit = Audit(
                    recommendation=result.recommendation,
                    notes=result.review_notes,
                    issues=[i.model_dump() for i in result.issues_found],
                    tokens=result.tokens_used,
                )
        if built.get("needs_review") and audit.recommendation == "approve":
            audit.recommendation = "escalate"
        await self._record(
            "auditor_finished",
            f"{spec.phase_id}: the auditor recommends {audit.recommendation}",
            phase=spec.phase_id,
            parts={
                part: {
                    "recommendation": audit.recommendation,
                    "tokens_used": self._phase_tokens(spec.phase_id, audit.tokens),
                }
            },
            payload={
                "recommendation": audit.recommendation,
                "review_notes": audit.notes[:2000],
                "issues_found": audit.issues[:50],
                "tokens_used": audit.tokens,
                "attempt": attempt,
            },
            defer=True,
        )
        return audit

    def _step_input(
        self,
        run: RunInput,
        spec: PhaseSpec,
        role: str,
        executor: CommandExecutor,
        env: dict[str, str],
        *,
        parts: dict[str, dict[str, Any]],
        diff: bool = False,
    ) -> StepInput:
        return StepInput(
            resource_kind=self.kind,
            resource_id=self.run_id,
            stage=f"{spec.phase_id}.{role}",
            argv=executor.run,
            cwd=self.workdir,
            env=env | executor.env,
            timeout_seconds=executor.timeout_seconds,
            kill_grace_seconds=run.kill_grace_seconds,
            diff=diff,
            resource_state="PHASE_EXECUTION",
            parts=parts,
        )

    async def _step(self, run: RunInput, step: StepInput) -> StepResult | str:
        """Run a builder's or auditor's command: its result, also when the command failed
        (a non-zero `exit_code`; the failure carries the result), or why it did not run."""
        try:
            result: StepResult = await run_step(self, step, **_bounds(run))
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            inner = err.cause
            # A failing command's result comes with its failure; a timed-out one failed,
            # whatever it exited with as it was stopped.
            if isinstance(inner, ApplicationError) and inner.details and inner.type != TIMED_OUT:
                with contextlib.suppress(ValidationError):
                    return StepResult.model_validate(inner.details[0])
            return f"the {step.stage.rpartition('.')[2]} failed: {cause(err)}"
        return result

    async def _series(
        self, run: RunInput, phase: Phase, builder: StepInput, auditor: StepInput
    ) -> StepResult | str:
        """Run the builder's and the auditor's commands in one activity, one trip through
        Temporal's queues a phase instead of two: the builder's result, or why they did not
        run. The auditor's is kept for `_audit` in `phase.audited`; it did not run when the
        builder failed, or reported more tokens than the run has left."""
        try:
            series = await run_series(
                self,
                SeriesInput(
                    steps=[builder, auditor],
                    with_results=True,
                    files_changed_env=FILES_CHANGED,
                    token_room=max(0, self.cap - self.tokens),
                ),
                **_bounds(run),
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            return f"the builder and auditor failed: {cause(err)}"
        built, *audited = series.results
        # A timed-out step failed, whatever it exited with as it was stopped.
        timed_out = series.error_type == TIMED_OUT
        if not audited:
            return f"the builder failed: {series.error}" if timed_out else built
        phase.audited = f"the auditor failed: {series.error}" if timed_out else audited[0]
        return built

    def _auditor_env(self, spec: PhaseSpec, attempt: int) -> dict[str, str]:
        """The auditor's variables but the files the builder changed (`FILES_CHANGED`)."""
        return {
            "PILOTHOUSE_RUN_ID": self.run_id,
            "PILOTHOUSE_PHASE_ID": spec.phase_id,
            "PILOTHOUSE_ATTEMPT": str(attempt),
        }

    @staticmethod
    def _expect(phase: Phase, role: Literal["builder", "auditor"]) -> None:
        phase.awaiting = role
        phase.builder = phase.auditor = None

    async def _await(
        self, phase: Phase, role: Literal["builder", "auditor"], timeout_s: float
    ) -> BuilderResult | AuditorResult | None:
        """Wait for the outside executor's result `_expect` made the phase take; None when
        the timer ran out first."""
        try:
            await workflow.wait_condition(
                lambda: getattr(phase, role) is not None, timeout=timedelta(seconds=timeout_s)
            )
        except TimeoutError:
            return None
        finally:
            phase.awaiting = None
        result: BuilderResult | AuditorResult | None = getattr(phase, role)
        return result

    def _phase_tokens(self, phase_id: str, tokens: int) -> int:
        phase = self.phases[phase_id]
        phase.tokens += tokens
        return phase.tokens

    # --- the executor's Update ------------------------------------------------------------

    @workflow.update
    async def phase(self, call: PhaseCall) -> PhaseAnswer:
        with self.answering():
            phase = self._check_call(call)
            if call.builder is not None:
                phase.builder = call.builder
                message = "Builder result submitted"
            elif call.auditor is not None:
                phase.auditor = call.auditor
                message = "Auditor result submitted"
            elif call.issue is not None:
                await self.record(
                    "records.issue",
                    IssueFact(
                        run_id=self.run_id, phase_id=call.phase_id, issue=call.issue.model_dump()
                    ),
                )
                message = "Issue recorded"
            else:
                assert call.status is not None
                values = call.status.model_dump(exclude_none=True, exclude={"quality_blocked"})
                if values.get("state") in DONE:
                    values.pop("state")  # a phase ends by its results, not by a status report
                if "state" in values:
                    phase.state = values["state"]
                await self._record(
                    "phase_status",
                    f"{call.phase_id}: status reported: {call.status.state}",
                    phase=call.phase_id,
                    parts={f"phase:{call.phase_id}": values},
                    payload=call.status.model_dump(exclude_none=True),
                )
                message = "Phase status updated"
            return PhaseAnswer(
                message=message, phase_id=call.phase_id, run_id=self.run_id, phase_state=phase.state
            )

    @phase.validator
    def _validate_phase(self, call: PhaseCall) -> None:
        self._check_call(call)

    def _check_call(self, call: PhaseCall) -> Phase:
        phase = self.phases.get(call.phase_id)
        if phase is None:
            raise refuse("PHASE_NOT_FOUND", f"run {self.run_id} has no phase {call.phase_id!r}")
        if self._ending:
            raise refuse("PHASE_NOT_AWAITING", f"run {self.run_id} has ended")
        for role in ("builder", "auditor"):
            if getattr(call, role) is not None and phase.awaiting != role:
                raise refuse(
                    "PHASE_NOT_AWAITING",
                    f"phase {call.phase_id} is {phase.state} and waits for no {role} result",
                )
        if call.status is not None and phase.state in DONE:
            raise refuse("PHASE_NOT_AWAITING", f"phase {call.phase_id} is {phase.state}")
        return phase

    # --- recording --------------------------------------------------------------------------

    async def _record(
        self,
        event_type: str,
        message: str,
        *,
        state: str | None = None,
        phase: str | None = None,
        parts: dict[str, dict[str, Any]] | None = None,
        payload: dict[str, Any] | None = None,
        changes: dict[str, Any] | None = None,
        error: str | None = None,
        final: bool = False,
        defer: bool = False,
    ) -> None:
        """Record a transition of the run; with `defer`, by the next activity the run
        starts anyway (always before it waits on anything), to spare a round trip."""
        if state is not None:
            self.show_state(state)
        fact = Transition(
            resource_kind=self.kind,
            resource_id=self.run_id,
            state=state,
            stage=phase,
            error=error,
            event_type=event_type,
            message=message,
            payload={"phase_id": phase, "status": state, **(payload or {})},
            parts=parts or {},
            changes={"tokens_used": self.tokens, **(changes or {})},
            final=final,
        )
        if defer:
            self.defer(fact)
        else:
            await self.record("records.transition", fact)


def _bounds(run: RunInput) -> dict[str, float]:
    """How long a builder's or auditor's activity may go without a heartbeat, and run."""
    return {
        "heartbeat_timeout_s": run.heartbeat_timeout_seconds,
        "open_ended_s": OPEN_ENDED_S,
        "margin_s": MARGIN_S,
    }
