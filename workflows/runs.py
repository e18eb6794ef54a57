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
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.workspaces import Workspace, WorkspaceIn
    from strict import explain
    from workflows.gate import GateConfig, cause, execute_local
    from workflows.run_spec import PhaseSpec, RunSpec, TierSpec
    from workflows.run_work import Phase, PhaseWork, RunInput

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
LOCAL_PREPARE_TIMEOUT = timedelta(seconds=30)
# Histories from before a workspace without a clone was prepared locally replay as they ran.
PREPARE_LOCALLY = "workspace-without-clone-prepared-locally"
__all__ = ["RUN_ENDS", "RunInput", "RunWorkflow"]


class RunOutcome(BaseModel):
    state: str
    tokens_used: int
    error: str | None = None


class RunEnded(ApplicationError):
    """A run that ended failed, already recorded; the type is its DONE_FAILED_… state."""


@workflow.defn(name="RunWorkflow")
class RunWorkflow(PhaseWork):
    waiting_state = "GATE"

    @workflow.init
    def __init__(self, run: RunInput) -> None:
        super().__init__(run.run_id)
        self.budget_openings = 0

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
        parallel = {t.tier_id for t in spec.tiers if t.parallel}
        self.phases = {p.phase_id: Phase(p, alone=p.tier_id not in parallel) for p in spec.phases}
        prepare = WorkspaceIn(
            resource_id=self.run_id, workdir=spec.run.workdir, repository=spec.run.repository
        )
        try:
            if (
                prepare.repository is None
                and self.may_hold_task()
                and workflow.patched(PREPARE_LOCALLY)
            ):
                # A directory checked or copied from a template: milliseconds, safe to run
                # again, so no trip through the server's queues. A clone stays ordinary.
                workspace: Workspace = await execute_local(
                    "workspaces.prepare",
                    prepare,
                    result_type=Workspace,
                    start_to_close_timeout=LOCAL_PREPARE_TIMEOUT,
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )
            else:
                workspace = await workflow.execute_activity(
                    "workspaces.prepare",
                    prepare,
                    result_type=Workspace,
                    start_to_close_timeout=PREPARE_TIMEOUT,
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise  # a cancel during a clone ends the run canceled, not failed
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

    # --- recording --------------------------------------------------------------------------

    def _show(self, phase_id: str | None) -> None:
        running = [p.spec.phase_id for p in self.phases.values() if p.state in ACTIVE]
        workflow.set_current_details(
            f"**Phase** {phase_id or '-'}\n\n**Active** {', '.join(running) or '-'}\n\n"
            f"**Tokens** {self.tokens} of {self.cap}"
        )

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
        # Executors' calls are refused from now on: the row says the run ended before this
        # record returns, and the API sends their Updates without reading the row first.
        self._ending = True
        await self._record("run_" + state.lower(), message, state=state, error=error, final=True)
        self._ended = True

    async def _fail(self, state: str, error: str) -> RunOutcome:
        """Record the run's failed end, then fail the workflow with that state as its type."""
        await self._end(state, f"run failed: {error}", error=error)
        raise RunEnded(error, type=state, non_retryable=True)
