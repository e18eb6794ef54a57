"""ApprovalWorkflow: one gate on its own, for a decision some outside executor waits on."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.records import Transition
    from workflows import attributes
    from workflows.gate import GateConfig, Gated, GateResult

STAGE = "approval"


class ApprovalInput(BaseModel):
    approval_id: str
    gate: GateConfig
    auto_approve_allowed: bool = True


@workflow.defn(name="ApprovalWorkflow")
class ApprovalWorkflow(Gated):
    kind = "approval"
    waiting_state = "pending"

    @workflow.run
    async def run(self, request: ApprovalInput) -> GateResult:
        result = await self.run_gate(STAGE, request.gate, 1, request.auto_approve_allowed)
        state = "timeout" if result.via == "timer" and result.state != "approved" else result.state
        workflow.upsert_search_attributes([attributes.STATE.value_set(state)])
        await self.record(
            "records.transition",
            Transition(
                resource_kind=self.kind,
                resource_id=request.approval_id,
                state=state,
                stage=STAGE,
                event_type=f"approval_{state}",
                message=f"approval {state} by {result.by} via {result.via}",
                payload=result.model_dump(mode="json"),
                final=True,
            ),
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result
