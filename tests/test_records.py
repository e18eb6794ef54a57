"""Records on their own, against real SQLite and PostgreSQL: carried decisions are written
first, in order, once."""

from __future__ import annotations

import uuid

from sqlmodel import col, select

from activities.records import DecisionRecord, Records, Transition, write_decisions
from store.engine import Database
from store.models import Decision, Event, GateRow, Job, utcnow
from store.writes import writing


async def open_gate(db: Database) -> tuple[str, str]:
    job_id = f"job-{uuid.uuid4()}"
    gate_id = f"{job_id}:s:1"
    async with db.session() as session:
        session.add(Job(id=job_id, stages=[], owner="test", state="needs_approval", stage="s"))
        session.add(
            GateRow(
                id=gate_id,
                resource_kind="job",
                resource_id=job_id,
                stage="s",
                config={},
                approvals_needed=1,
                opened_at=utcnow(),
            )
        )
        await session.commit()
    return job_id, gate_id


def approval(job_id: str, gate_id: str, update_id: str = "u1") -> DecisionRecord:
    return DecisionRecord(
        id=f"{job_id}/{update_id}",
        gate_id=gate_id,
        resource_kind="job",
        resource_id=job_id,
        stage="s",
        outcome="approve",
        by="alice",
        via="api",
        reason="fine",
        input=None,
        gate_state="approved",
        approvals=["alice"],
    )


async def test_a_decision_carried_twice_is_written_once(db: Database) -> None:
    job_id, gate_id = await open_gate(db)
    record = approval(job_id, gate_id)
    for _ in range(2):  # a retried activity, or the next one carrying it again
        async with writing(db) as writes:
            await write_decisions(writes, [record, record])
    async with db.session() as session:
        rows = list(await session.exec(select(Decision).where(Decision.gate_id == gate_id)))
        gate = await session.get(GateRow, gate_id)
        kinds = [
            e.type for e in await session.exec(select(Event).where(Event.resource_id == job_id))
        ]
    assert [r.id for r in rows] == [record.id] and rows[0].by == "alice"
    assert gate is not None and gate.state == "approved" and gate.decided_by == "alice"
    assert gate.approvals == ["alice"] and gate.decided_at is not None
    assert kinds == ["gate_approved"]


async def test_a_transition_writes_the_decisions_it_carries_first(db: Database) -> None:
    job_id, gate_id = await open_gate(db)
    await Records(db).transition(
        Transition(
            resource_kind="job",
            resource_id=job_id,
            state="completed",
            event_type="job_completed",
            final=True,
            decisions=[approval(job_id, gate_id)],
        )
    )
    async with db.session() as session:
        events = list(
            await session.exec(
                select(Event).where(Event.resource_id == job_id).order_by(col(Event.id))
            )
        )
        job = await session.get(Job, job_id)
    assert [e.type for e in events] == ["gate_approved", "job_completed"]
    assert job is not None and job.state == "completed"


async def test_an_unknown_resource_is_left_alone(db: Database) -> None:
    missing = f"job-{uuid.uuid4()}"
    await Records(db).transition(
        Transition(resource_kind="job", resource_id=missing, state="failed", event_type="x")
    )
    async with db.session() as session:
        assert await session.get(Job, missing) is None
