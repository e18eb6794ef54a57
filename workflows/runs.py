"""RunWorkflow: an autonomous build run. Tiers run in order; a tier's phases in order, or
at once when it is `parallel`. A phase is built, audited, maybe gated, then done:

- the auditor's `approve` goes on, `revise` builds again (up to `max_attempts`), and
  `escalate` opens a human gate whatever the configuration says;
- a patch over `risk.max_lines`, or touching `risk.protected_paths`, opens a gate too;
- tokens reported by builders and auditors add up; past `token_cap` the run waits at a
  `budget_exceeded` gate: approve goes on, reject fails the run.

Builders and auditors are commands (the step executor, in the run's workspace) or outside
executors that post their results (the `phase` Update), waited for with a timer.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.records import IssueFact, Transition
    from activities.steps import StepInput, StepResult
    from activities.workspaces import Workspace, WorkspaceIn
    from strict import explain
    from workflows import attributes
    from workflows.gate import GateConfig, Gated, refuse
    from workflows.jobs import WORKER_LOSSES
    from workflows.run_results import (
        AuditorResult,
        BuilderResult,
        PhaseAnswer,
        PhaseCall,
        PhaseState,
    )
    from workflows.run_spec import CommandExecutor, PhaseSpec, RunSpec, TierSpec

DONE = ("COMPLETE", "FAILED", "SKIPPED")
RUN_ENDS = (
    "DONE_SUCCESS",
    "DONE_CANCELED",
    "DONE_FAILED_BUDGET_EXHAUSTED",
    "DONE_FAILED_POLICY_VIOLATION",
    "DONE_FAILED_REQUIRES_HUMAN_REVIEW",
    "DONE_FAILED_ENVIRONMENT",
)
ACTIVE = ("EXECUTING", "GATE", "CI_RUNNING")
BUDGET = "budget_exceeded"
PREPARE_TIMEOUT = timedelta(minutes=10)


class RunInput(BaseModel):
    """Loosely typed on purpose: `spec` is checked as a `RunSpec` in the workflow."""

    run_id: str
    spec: dict[str, Any]
    auto_approve_allowed: bool = True
    heartbeat_timeout_seconds: float = 5
    kill_grace_seconds: float = 15


class RunOutcome(BaseModel):
    state: str
    tokens_used: int
    error: str | None = None


class RunEnded(ApplicationError):
    """A run that ended failed, already recorded; the type is its DONE_FAILED_… state."""


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
    state: PhaseState = "QUEUED"
    awaiting: Literal["builder", "auditor"] | None = None
    builder: BuilderResult | None = None
    auditor: AuditorResult | None = None
    openings: int = 0
    tokens: int = 0


@workflow.defn(name="RunWorkflow")
class RunWorkflow(Gated):
    kind = "run"
    waiting_state = "GATE"

    @workflow.init
    def __init__(self, run: RunInput) -> None:
        super().__init__()
        self.run_id = run.run_id
        self.phases: dict[str, Phase] = {}
        self.tokens = 0
        self.cap = 0
        self.budget_openings = 0
        self.workdir = ""
        self._ended = False

    @workflow.run
    async def run(self, run: RunInput) -> RunOutcome:
        try:
            outcome = await self._run(run)
            await workflow.wait_condition(workflow.all_handlers_finished)
            return outcome
        except asyncio.CancelledError:
            await self._end("DONE_CANCELED", "run canceled")
            raise
        except Exception as err:
            if is_cancelled_exception(err):
                await self._end("DONE_CANCELED", "run canceled")
                raise
            if self._ended or isinstance(err, workflow.NondeterminismError):
                raise
            error = f"internal error: {type(err).__name__}: {err}"
            return await self._fail("DONE_FAILED_ENVIRONMENT", error)

    async def _run(self, run: RunInput) -> RunOutcome:
        try:
            spec = RunSpec.model_validate(run.spec)
        except ValidationError as exc:
            return await self._fail("DONE_FAILED_POLICY_VIOLATION", f"invalid run: {explain(exc)}")
        assert spec.run.token_cap is not None
        self.cap = spec.run.token_cap
        self.phases = {p.phase_id: Phase(p) for p in spec.phases}
        try:
            workspace: Workspace = await workflow.execute_activity(
                "workspaces.prepare",
                WorkspaceIn(
                    resource_id=self.run_id,
                    workdir=spec.run.workdir,
                    repository=spec.run.repository,
                ),
                result_type=Workspace,
                start_to_close_timeout=PREPARE_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError as err:
            return await self._fail("DONE_FAILED_ENVIRONMENT", f"workspace: {cause(err)}")
        self.workdir = workspace.path
        for tier, phases in spec.in_order():
            failed = await self._tier(run, tier, phases)
            if failed is not None:
                for phase in self.phases.values():
                    if phase.state == "QUEUED":
                        phase.state = "SKIPPED"
                await self._record(
                    "tier_failed",
                    f"tier {tier.tier_id} failed: {failed}",
                    parts={f"tier:{tier.tier_id}": {"state": "FAILED"}}
                    | {
                        f"phase:{p.spec.phase_id}": {"state": "SKIPPED"}
                        for p in self.phases.values()
                        if p.state == "SKIPPED"
                    }
                    | {
                        f"tier:{t.tier_id}": {"state": "SKIPPED"}
                        for t, ps in spec.in_order()
                        if all(self.phases[p.phase_id].state == "SKIPPED" for p in ps) and ps
                    },
                )
                if failed == BUDGET:
                    return await self._fail("DONE_FAILED_BUDGET_EXHAUSTED", "token budget refused")
                return await self._fail("DONE_FAILED_REQUIRES_HUMAN_REVIEW", failed)
        await self._end("DONE_SUCCESS", "run succeeded")
        return RunOutcome(state="DONE_SUCCESS", tokens_used=self.tokens)

    async def _tier(self, run: RunInput, tier: TierSpec, phases: list[PhaseSpec]) -> str | None:
        """Run a tier's phases; the first failure's reason, or None when all completed."""
        await self._record(
            "tier_started",
            f"tier {tier.tier_id} started",
            state="PHASE_EXECUTION",
            parts={f"tier:{tier.tier_id}": {"state": "IN_PROGRESS"}},
            defer=True,
        )
        if tier.parallel:
            failures = await asyncio.gather(*(self._phase(run, p) for p in phases))
        else:
            failures = []
            for phase in phases:
                failures.append(await self._phase(run, phase))
                if failures[-1] is not None:
                    break
        failed = next((f for f in failures if f is not None), None)
        if failed is None:
            await self._record(
                "tier_completed",
                f"tier {tier.tier_id} completed",
                parts={f"tier:{tier.tier_id}": {"state": "COMPLETE"}},
                defer=True,
            )
        return failed

    # --- one phase ---------------------------------------------------------------------

    async def _phase(self, run: RunInput, spec: PhaseSpec) -> str | None:
        phase = self.phases[spec.phase_id]
        issues: list[dict[str, Any]] = []
        attempt = 0
        while True:
            attempt += 1
            phase.state = "EXECUTING"
            self._show(spec.phase_id)
            built = await self._build(run, phase, attempt, issues)
            if isinstance(built, str):
                return await self._phase_failed(phase, built)
            if not await self._within_budget(run, built["tokens_used"]):
                return await self._phase_failed(phase, BUDGET)
            audit = await self._audit(run, phase, attempt, built)
            if not await self._within_budget(run, audit.tokens):
                return await self._phase_failed(phase, BUDGET)
            if audit.recommendation == "revise":
                if attempt < spec.max_attempts:
                    issues = audit.issues
                    continue
                return await self._phase_failed(
                    phase, f"the auditor asked for revisions {attempt} times (max_attempts)"
                )
            break
        reasons = self._risks(spec, built)
        if audit.recommendation == "escalate":
            reasons.insert(0, f"the auditor escalated: {audit.notes or 'no notes'}")
        gate = spec.gate if spec.gate is not None and spec.gate.required else None
        if reasons and gate is None:
            gate = GateConfig()
        if gate is not None:
            phase.state = "GATE"
            phase.openings += 1
            self._show(spec.phase_id)
            await self._record(
                "phase_gate",
                f"{spec.phase_id}: waiting at its gate",
                state="GATE",
                phase=spec.phase_id,
                parts={f"phase:{spec.phase_id}": {"state": "GATE"}},
                defer=True,
            )
            result = await self.run_gate(
                spec.phase_id,
                gate,
                phase.openings,
                run.auto_approve_allowed,
                why="; ".join(reasons) or None,
            )
            if result.state != "approved":
                reason = f"gate {result.gate_id} {result.state}: {result.reason or ''}".strip()
                return await self._phase_failed(phase, reason)
        phase.state = "COMPLETE"
        await self._record(
            "phase_completed",
            f"{spec.phase_id}: complete",
            state="PHASE_EXECUTION",
            phase=spec.phase_id,
            parts={f"phase:{spec.phase_id}": {"state": "COMPLETE"}},
            defer=True,
        )
        return None

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
            step = await self._step(
                run,
                spec,
                "builder",
                spec.builder,
                env,
                diff=True,
                parts={part: {"state": "EXECUTING", "builder_attempts": attempt}},
            )
            if isinstance(step, str):
                return step
            report = last_json(step.tail)
            diff = step.diff.model_dump() if step.diff else {}
            built = {
                "files_changed": diff.get("files_changed", []),
                "lines_added": diff.get("lines_added", 0),
                "lines_removed": diff.get("lines_removed", 0),
                "patch_path": diff.get("patch_path"),
                "tokens_used": int(report.get("tokens_used", 0) or 0),
            }
        else:
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
            env = {
                "PILOTHOUSE_RUN_ID": self.run_id,
                "PILOTHOUSE_PHASE_ID": spec.phase_id,
                "PILOTHOUSE_ATTEMPT": str(attempt),
                "PILOTHOUSE_FILES_CHANGED": json.dumps(built["files_changed"]),
            }
            step = await self._step(
                run, spec, "auditor", auditor, env, parts={part: {"auditor_attempts": attempt}}
            )
            tail = step.tail if isinstance(step, StepResult) else failed_tail(step)
            report = last_json(tail)
            recommendation: Literal["approve", "revise", "escalate"] = (
                "approve" if isinstance(step, StepResult) else "revise"
            )
            if report.get("recommendation") in ("approve", "revise", "escalate"):
                recommendation = report["recommendation"]
            audit = Audit(
                recommendation=recommendation,
                notes=str(report.get("review_notes", "") or ("\n".join(tail[-5:]))),
                issues=list(report.get("issues_found", []) or []),
                tokens=int(report.get("tokens_used", 0) or 0),
            )
        else:
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

    async def _step(
        self,
        run: RunInput,
        spec: PhaseSpec,
        role: str,
        executor: CommandExecutor,
        env: dict[str, str],
        *,
        parts: dict[str, dict[str, Any]],
        diff: bool = False,
    ) -> StepResult | str:
        """Run a builder's or auditor's command; its result, or why it could not run.
        An auditor's failing command still has a result: its details carry the tail."""
        try:
            result: StepResult = await self.carrying(
                "steps.run",
                StepInput(
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
                ),
                result_type=StepResult,
                start_to_close_timeout=timedelta(
                    seconds=(executor.timeout_seconds or 24 * 3600) + run.kill_grace_seconds + 60
                ),
                heartbeat_timeout=timedelta(seconds=run.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(
                    maximum_attempts=1 + WORKER_LOSSES, initial_interval=timedelta(seconds=1)
                ),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            if role == "auditor" and isinstance(err.cause, ApplicationError):
                return json.dumps(list(err.cause.details[:1]))
            return f"the {role} failed: {cause(err)}"
        return result

    async def _await(
        self, phase: Phase, role: Literal["builder", "auditor"], timeout_s: float
    ) -> BuilderResult | AuditorResult | None:
        """Wait for an outside executor's result; None when the timer ran out first."""
        phase.awaiting = role
        phase.builder = phase.auditor = None
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

    # --- the budget and the risk rule ---------------------------------------------------

    async def _within_budget(self, run: RunInput, tokens: int) -> bool:
        """Count tokens; past the cap, wait at a budget gate: approve goes on (the cap is
        lifted for this run), reject stops it."""
        self.tokens += tokens
        if self.tokens <= self.cap:
            return True
        self.budget_openings += 1
        await self._record(
            "budget_exceeded",
            f"{self.tokens} tokens used, over the cap of {self.cap}",
            state="GATE",
            payload={"tokens_used": self.tokens, "token_cap": self.cap},
            defer=True,
        )
        result = await self.run_gate(
            BUDGET,
            GateConfig(),
            self.budget_openings,
            run.auto_approve_allowed,
            why=f"{self.tokens} tokens used, over the run's token_cap of {self.cap}",
        )
        if result.state != "approved":
            return False
        self.cap = max(self.cap, self.tokens) * 2
        await self._record(
            "budget_raised",
            f"token cap raised to {self.cap} by {result.by}",
            state="PHASE_EXECUTION",
            changes={"token_cap": self.cap},
        )
        return True

    @staticmethod
    def _risks(spec: PhaseSpec, built: dict[str, Any]) -> list[str]:
        reasons = []
        lines = built["lines_added"] + built["lines_removed"]
        if lines > spec.risk.max_lines:
            reasons.append(
                f"the patch changes {lines} lines, over risk.max_lines {spec.risk.max_lines}"
            )
        touched = sorted(
            f
            for f in built["files_changed"]
            if any(fnmatch.fnmatch(f, glob) for glob in spec.risk.protected_paths)
        )
        if touched:
            reasons.append(f"the patch touches protected paths: {', '.join(touched[:10])}")
        if built.get("needs_review"):
            reasons.append("the builder asked for a review")
        return reasons

    def _phase_tokens(self, phase_id: str, tokens: int) -> int:
        phase = self.phases[phase_id]
        phase.tokens += tokens
        return phase.tokens

    # --- the executor's Update ------------------------------------------------------------

    @workflow.update
    async def phase(self, call: PhaseCall) -> PhaseAnswer:
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
        if self._ended:
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

    def _show(self, phase_id: str | None) -> None:
        running = [p.spec.phase_id for p in self.phases.values() if p.state in ACTIVE]
        workflow.set_current_details(
            f"**Phase** {phase_id or '-'}\n\n**Active** {', '.join(running) or '-'}\n\n"
            f"**Tokens** {self.tokens} of {self.cap}"
        )

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
            workflow.upsert_search_attributes([attributes.STATE.value_set(state)])
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

    async def _phase_failed(self, phase: Phase, reason: str) -> str:
        phase.state = "FAILED"
        await self._record(
            "phase_failed",
            f"{phase.spec.phase_id}: failed: {reason}",
            phase=phase.spec.phase_id,
            parts={f"phase:{phase.spec.phase_id}": {"state": "FAILED", "error": reason}},
            payload={"error": reason},
        )
        return reason

    async def _end(self, state: str, message: str, error: str | None = None) -> None:
        await self._record("run_" + state.lower(), message, state=state, error=error, final=True)
        self._ended = True

    async def _fail(self, state: str, error: str) -> RunOutcome:
        """Record the run's failed end, then fail the workflow with that state as its type."""
        await self._end(state, f"run failed: {error}", error=error)
        raise RunEnded(error, type=state, non_retryable=True)


def cause(err: ActivityError) -> str:
    inner = err.cause
    return inner.message if isinstance(inner, ApplicationError) else str(inner or err)


def last_json(tail: list[str]) -> dict[str, Any]:
    """The JSON object on a command's last printed line, if there is one."""
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


def failed_tail(details: str) -> list[str]:
    """The tail of a failed step, from the StepResult its error carries."""
    try:
        [result] = json.loads(details)
        return list(result.get("tail", []))
    except (ValueError, TypeError, AttributeError):
        return []
