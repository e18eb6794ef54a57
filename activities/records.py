"""Records: the only way a workflow writes to the database.

Each activity writes its row changes and its event in one transaction, and is safe to
retry: a retried decision finds its row and writes nothing twice.

A decision is not recorded by an activity of its own. The workflow takes it at once and
hands it to the next activity it runs (every input here, and the step executor's, is
`CarriesDecisions`), which writes it first, in the same transaction as its own fact. So
the audit trail and the event log stay in the order things happened, and approving costs
no extra round trip before the next stage starts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities import step_runs
from store import issues, resources
from store.engine import Database
from store.models import Decision, GateRow, RunPhase, utcnow
from store.writes import Writes, writing


class DecisionRecord(BaseModel):
    id: str
    gate_id: str
    resource_kind: str
    resource_id: str
    stage: str
    outcome: str
    by: str
    via: str
    reason: str | None
    input: dict[str, Any] | None
    gate_state: str
    approvals: list[str]


class CarriesDecisions(BaseModel):
    """An activity input with what the workflow has decided or done but not yet recorded:
    decisions, then deferred transitions, written first, in the activity's transaction."""

    decisions: list[DecisionRecord] = Field(
        default_factory=list, description="Written first, in the same transaction"
    )
    facts: list[Transition] = Field(
        default_factory=list, description="Deferred transitions, written after the decisions"
    )


class Transition(CarriesDecisions):
    """A resource's new state, and the event that says so."""

    resource_kind: str
    resource_id: str
    state: str | None = Field(None, description="The resource's new state; None keeps it")
    stage: str | None = None
    keep_stage: bool = Field(
        False,
        description="Leave the row's stage as its steps set it (the workflow does not know it)",
    )
    error: str | None = None
    event_type: str
    message: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    final: bool = False
    changes: dict[str, Any] = Field(default_factory=dict, description="Other columns to set")
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='Columns of parts with rows of their own: "phase:<id>"'
    )
    adds: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='Parts that begin here ("iteration:<n>"), unless there'
    )


CarriesDecisions.model_rebuild()


class GateOpened(CarriesDecisions):
    gate_id: str
    resource_kind: str
    resource_id: str
    stage: str
    config: dict[str, Any]
    approvals_needed: int
    opened_at: datetime
    deadline: datetime | None
    resource_state: str | None = None
    why: str | None = Field(None, description="What opened the gate, beyond its configuration")


class Notifying(BaseModel):
    """`records.gate_opened`'s answer when gate messages go to Telegram: the workflow then
    starts the notify activities, each within this bound (see `activities/notify.py`)."""

    within_seconds: float


class IssueFact(CarriesDecisions):
    run_id: str
    phase_id: str
    issue: dict[str, Any]


class GateReminder(CarriesDecisions):
    gate_id: str
    resource_kind: str
    resource_id: str
    stage: str
    approvals: list[str]


def _decision_event(record: DecisionRecord) -> str:
    if record.via == "auto":
        return "gate_auto_approved"
    if record.via == "timer":
        return "gate_timed_out"
    if record.gate_state == "open":
        return "gate_approval_recorded"
    return f"gate_{record.gate_state}"


async def write_carried(writes: Writes, carried: CarriesDecisions) -> None:
    """What an activity carries: decisions, then deferred transitions, in that order."""
    await write_decisions(writes, carried.decisions)
    for fact in carried.facts:
        await write_transition(writes, fact)


async def write_decisions(writes: Writes, decisions: list[DecisionRecord]) -> None:
    """Add each decision's row, its gate's new state and its event, in order; a decision
    already recorded (a retried activity, or one carried twice) is skipped. Plain
    statements, no ORM loads: this runs before the next stage may start."""
    for d in decisions:
        row = d.model_dump(exclude={"gate_state", "approvals"}) | {"created_at": utcnow()}
        if not await resources.insert_new(writes.session, Decision, ("id",), row):
            continue
        gate: dict[str, Any] = {"approvals": d.approvals, "state": d.gate_state}
        if d.gate_state != "open":
            gate |= {"decided_at": utcnow(), "decided_by": d.by, "via": d.via, "reason": d.reason}
        writes.update(GateRow, {"id": d.gate_id}, gate)
        writes.event(
            d.resource_kind,
            d.resource_id,
            _decision_event(d),
            stage=d.stage,
            status=d.gate_state,
            message=f"{d.stage}: {d.outcome} by {d.by} via {d.via}",
            payload={
                "gate_id": d.gate_id,
                "stage": d.stage,
                "operator": d.by,
                "via": d.via,
                "outcome": d.outcome,
                "notes": d.reason,
                "input": d.input,
                "approvals": d.approvals,
            },
        )


async def write_transition(writes: Writes, t: Transition) -> None:
    """A resource's new state and its event; at its end, its open gates close with it."""
    await write_carried(writes, t)
    session = writes.session
    state = {"state": t.state} if t.state is not None else {}
    stage = {} if t.keep_stage else {"stage": t.stage}
    writes.set_fields(t.resource_kind, t.resource_id, error=t.error, **stage, **state, **t.changes)
    if t.adds:
        await writes.flush()  # a held update of a part that begins here found no row before
        await resources.add_parts(session, t.resource_kind, t.resource_id, t.adds)
    writes.set_parts(t.resource_kind, t.resource_id, t.parts)
    if t.final:
        # A decision held for a gate comes first: a gate its approval left open closes now.
        await writes.flush()
        await resources.set_ended(session, t.resource_kind, t.resource_id)
        await close_gates(session, t.resource_id, gate_end(t.state), t.error or t.message)
        # Its local steps are in Temporal's history by now: the final record is an ordinary
        # activity, whose scheduling completed the workflow task that ran them.
        await step_runs.forget(session, t.resource_id)
    writes.event(
        t.resource_kind,
        t.resource_id,
        t.event_type,
        stage=t.stage,
        status=t.state,
        message=t.message,
        payload=t.payload,
        final=t.final,
    )


def gate_end(resource_state: str | None) -> str:
    """How a gate still open closes when its resource ends, whatever its family calls the
    end: `canceled` or `failed`."""
    return "canceled" if "cancel" in (resource_state or "").lower() else "failed"


async def close_gates(session: AsyncSession, resource_id: str, state: str, reason: str) -> None:
    """Gates still open when their resource ends are closed with the resource's end state
    (`canceled`, `failed`), so no inbox offers a decision nothing waits for."""
    await session.exec(
        sa.update(GateRow)
        .where(col(GateRow.resource_id) == resource_id, col(GateRow.state) == "open")
        .values(state=state, decided_at=utcnow(), decided_by="system", via="system", reason=reason)
    )


class Records:
    """Activities bound to the worker's database. With `notifying`, opening a gate answers
    it, so the workflow sends the gate's Telegram messages; without, nothing changes."""

    def __init__(self, db: Database, notifying: Notifying | None = None) -> None:
        self.db = db
        self.notifying = notifying

    @activity.defn(name="records.transition")
    async def transition(self, t: Transition) -> None:
        async with writing(self.db) as writes:
            await write_transition(writes, t)

    @activity.defn(name="records.gate_opened")
    async def gate_opened(self, g: GateOpened) -> Notifying | None:
        async with writing(self.db) as writes:
            await write_carried(writes, g)
            session = writes.session
            if await session.get(GateRow, g.gate_id) is not None:
                return self.notifying
            session.add(
                GateRow(
                    id=g.gate_id,
                    resource_kind=g.resource_kind,
                    resource_id=g.resource_id,
                    stage=g.stage,
                    config=g.config | ({"why": g.why} if g.why else {}),
                    approvals_needed=g.approvals_needed,
                    opened_at=g.opened_at,
                    deadline=g.deadline,
                )
            )
            if g.resource_state:
                writes.set_fields(
                    g.resource_kind, g.resource_id, state=g.resource_state, stage=g.stage
                )
            writes.event(
                g.resource_kind,
                g.resource_id,
                "gate_pause",
                stage=g.stage,
                status=g.resource_state or "open",
                message=f"{g.stage}: waiting for approval" + (f": {g.why}" if g.why else ""),
                payload={
                    "stage": g.stage,
                    "gate_id": g.gate_id,
                    "gate_type": "required",
                    "approvals_needed": g.approvals_needed,
                    "deadline": g.deadline.isoformat() if g.deadline else None,
                    "timeout_seconds": g.config.get("timeout_seconds"),
                    "why": g.why,
                },
            )
        return self.notifying

    @activity.defn(name="records.gate_reminder")
    async def gate_reminder(self, r: GateReminder) -> None:
        async with writing(self.db) as writes:
            await write_carried(writes, r)
            writes.event(
                r.resource_kind,
                r.resource_id,
                "gate_reminder",
                stage=r.stage,
                status="open",
                message=f"{r.stage}: still waiting for approval",
                payload={"gate_id": r.gate_id, "approvals": r.approvals},
            )

    @activity.defn(name="records.decisions")
    async def decisions(self, c: CarriesDecisions) -> None:
        """Decisions alone: approvals that leave a quorum gate open start nothing else."""
        async with writing(self.db) as writes:
            await write_carried(writes, c)

    @activity.defn(name="records.decision")
    async def decision(self, d: DecisionRecord) -> None:
        """One decision: what workflows started before decisions were carried still call."""
        async with writing(self.db) as writes:
            await write_decisions(writes, [d])

    @activity.defn(name="records.issue")
    async def issue(self, f: IssueFact) -> None:
        """An issue a phase reported: its row (counted by key), the phase's counts, an event."""
        async with writing(self.db) as writes:
            await write_carried(writes, f)
            await writes.flush()  # the counts below are read and written through the ORM
            session = writes.session
            phase = (
                await session.exec(
                    select(RunPhase).where(
                        RunPhase.run_id == f.run_id, RunPhase.phase_id == f.phase_id
                    )
                )
            ).first()
            if phase is not None:
                row = await issues.record(session, f.run_id, phase, f.issue)
                writes.event(
                    "run",
                    f.run_id,
                    "issue_recorded",
                    stage=f.phase_id,
                    status=row.severity,
                    message=f"{f.phase_id}: {row.severity} issue {row.issue_key}",
                    payload={**f.issue, "occurrence_count": row.occurrence_count},
                )
