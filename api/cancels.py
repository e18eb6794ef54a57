"""Cancelling a resource from the API: the one path every family's cancel takes.

A running workflow is asked to cancel, and records its own end (its step's process group
stopped first). A workflow that cannot take the request, because its task keeps failing,
is terminated; one that has already ended without saying so (terminated from the Temporal
UI, timed out, gone with retention) is not asked. In those two cases the API records the
end itself, so the row, its open gates and the event log agree with Temporal.
"""

from __future__ import annotations

from typing import Literal

from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.records import Transition, write_transition
from api.decisions import updating
from store.writes import written

Outcome = Literal["canceling", "canceled", "failed", "completed"]
End = Literal["canceled", "failed", "completed"]

# How a workflow that ended without recording it shows in its resource's row.
ENDED_AS: dict[WorkflowExecutionStatus, End] = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
}


async def cancel(
    session: AsyncSession,
    temporal: Client,
    kind: str,
    resource_id: str,
    by: str,
    states: dict[End, str] | None = None,
) -> Outcome:
    """Cancel a resource; how it stands now. `states` names each end in the family's own
    words (a run's `canceled` is `DONE_CANCELED`); by default, the words themselves."""
    named = states or {}
    handle = temporal.get_workflow_handle(resource_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        description = None
    if description is None or description.status != WorkflowExecutionStatus.RUNNING:
        status = description.status if description else None
        state = ENDED_AS.get(status, "canceled") if status else "canceled"
        why = f"its workflow had already ended ({status.name.lower() if status else 'gone'})"
        await _record(session, kind, resource_id, state, named, f"{kind} {state}: {why}")
        return state
    task = description.raw_description.pending_workflow_task
    if task.attempt > 1:
        reason = f"canceled by {by}: its workflow task kept failing ({task.attempt} attempts)"
        await updating(handle.terminate(reason=reason))
        await _record(session, kind, resource_id, "canceled", named, f"{kind} {reason}")
        return "canceled"
    await updating(handle.cancel())
    return "canceling"


async def _record(
    session: AsyncSession,
    kind: str,
    resource_id: str,
    state: End,
    named: dict[End, str],
    message: str,
) -> None:
    async with written(session) as writes:
        await write_transition(
            writes,
            Transition(
                resource_kind=kind,
                resource_id=resource_id,
                state=named.get(state, state),
                error=message if state != "completed" else None,
                event_type=f"{kind}_{state}",
                message=message,
                payload={"status": state, "recorded_by": "api"},
                final=True,
            ),
        )
