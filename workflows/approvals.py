"""ApprovalWorkflow: one gate on its own, for a decision some outside executor waits on."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.records import Transition
    from strict import explain
    from workflows.gate import GateConfig, Gated, GateResult

STAGE = "approval"


class ApprovalInput(BaseModel):
    """Loosely typed on purpose: `gate` is checked as a `GateConfig` in the workflow."""

    approval_id: str
    gate: dict[str, Any]
    auto_approve_allowed: bool = True


@workflow.defn(name="ApprovalWorkflow")
class ApprovalWorkflow(Gated):
    kind = "approval"
    waiting_state = "pending"

    @workflow.run
    async def run(self, request: ApprovalInput) -> GateResult:
        try:
            return await self._run(request)
        except asyncio.CancelledError:
            await self._end(request, "canceled", "approval canceled")
            raise
        except Exception as err:
            if is_cancelled_exception(err):
                await self._end(request, "canceled", "approval canceled")
                raise
            if isinstance(err, ApplicationError | workflow.NondeterminismError):
                raise
            error = f"internal error: {type(err).__name__}: {err}"
            await self._end(request, "failed", error, error=error)
            raise ApplicationError(error, type="InternalError", non_retryable=True) from None

    async def _run(self, request: ApprovalInput) -> GateResult:
        try:
            gate = GateConfig.model_validate(request.gate)
        except ValidationError as exc:
            error = f"invalid approval request: {explain(exc)}"
            await self._end(request, "failed", error, error=error)
            raise ApplicationError(error, type="InvalidApproval", non_retryable=True) from None
        result = await self.run_gate(STAGE, gate, 1, request.auto_approve_allowed)
        state = "timeout" if result.via == "timer" and result.state != "approved" else result.state
        await self._end(
            request,
            state,
            f"approval {state} by {result.by} via {result.via}",
            payload=result.model_dump(mode="json"),
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _end(
        self,
        request: ApprovalInput,
        state: str,
        message: str,
        *,
        error: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        self.show_state(state)
        await self.record(
            "records.transition",
            Transition(
                resource_kind=self.kind,
                resource_id=request.approval_id,
                state=state,
                stage=STAGE,
                error=error,
                event_type=f"approval_{state}",
                message=message,
                payload=payload or {"error": error},
                final=True,
            ),
        )
