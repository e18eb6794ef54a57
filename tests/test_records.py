"""Records on their own, against real SQLite and PostgreSQL: carried decisions are written
first, in order, once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from activities.records import DecisionRecord, Records, Transition, write_decisions
from activities.step_records import StepInput, StepRecords
from store import sqlite_driver
from store.engine import Database, is_sqlite
from store.models import Decision, Event, GateRow, Job, Run, RunPhase, utcnow
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


async def end_carrying(db: Database, job_id: str, state: str, decision: DecisionRecord) -> None:
    """The job's final transition, carrying `decision`."""
    await Records(db).transition(
        Transition(
            resource_kind="job",
            resource_id=job_id,
            state=state,
            event_type=f"job_{state}",
            final=True,
            decisions=[decision],
        )
    )


async def event_types(db: Database, resource_id: str) -> list[str]:
    async with db.session() as session:
        rows = await session.exec(
            select(Event).where(Event.resource_id == resource_id).order_by(col(Event.id))
        )
        return [e.type for e in rows]


async def test_a_transition_writes_the_decisions_it_carries_first(db: Database) -> None:
    job_id, gate_id = await open_gate(db)
    await end_carrying(db, job_id, "completed", approval(job_id, gate_id))
    async with db.session() as session:
        job = await session.get(Job, job_id)
    assert await event_types(db, job_id) == ["gate_approved", "job_completed"]
    assert job is not None and job.state == "completed"


async def test_an_unknown_resource_is_left_alone(db: Database) -> None:
    missing = f"job-{uuid.uuid4()}"
    await Records(db).transition(
        Transition(resource_kind="job", resource_id=missing, state="failed", event_type="x")
    )
    async with db.session() as session:
        assert await session.get(Job, missing) is None


async def test_an_approval_short_of_its_quorum_then_the_end_closes_the_gate(
    db: Database,
) -> None:
    """The approval is held to be written with the rest; the end must still find the gate
    it left open, and close it."""
    job_id, gate_id = await open_gate(db)
    async with db.session() as session:
        gate = await session.get(GateRow, gate_id)
        assert gate is not None
        gate.approvals_needed = 2
        await session.commit()
    first = approval(job_id, gate_id).model_copy(update={"gate_state": "open"})
    await end_carrying(db, job_id, "canceled", first)
    async with db.session() as session:
        gate = await session.get(GateRow, gate_id)
    assert gate is not None and gate.state == "canceled" and gate.approvals == ["alice"]
    assert await event_types(db, job_id) == ["gate_approval_recorded", "job_canceled"]


async def test_a_step_start_writes_what_it_carries_in_few_statements(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two deferred transitions and the start: one UPDATE a row and one INSERT of the three
    events, in order, whatever the number of facts."""
    run_id = f"run-{uuid.uuid4()}"
    async with db.session() as session:
        session.add(Run(id=run_id, workdir="/tmp", owner="test"))
        for p in ("p1", "p2"):
            session.add(RunPhase(run_id=run_id, phase_id=p, phase_index=0, tier_id="t", name=p))
        await session.commit()

    def fact(event_type: str, phase: str, **values: Any) -> Transition:
        return Transition(
            resource_kind="run",
            resource_id=run_id,
            state="PHASE_EXECUTION",
            stage=phase,
            event_type=event_type,
            parts={f"phase:{phase}": values},
            changes={"tokens_used": 7},
        )

    step = StepInput(
        resource_kind="run",
        resource_id=run_id,
        stage="p2.builder",
        argv=["true"],
        resource_state="PHASE_EXECUTION",
        parts={"phase:p2": {"state": "EXECUTING"}},
        facts=[
            fact("auditor_finished", "p1", recommendation="approve"),
            fact("phase_completed", "p1", state="COMPLETE"),
        ],
    )
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    # On SQLite a flush's statements go past SQLAlchemy's events (store/sqlite_writes.py),
    # as one batch: there the driver's batches are recorded.
    batches: list[list[str]] = []
    write = sqlite_driver.write

    async def batched(connection: Any, given: Sequence[sqlite_driver.Statement]) -> None:
        batches.append([operation.split()[0].upper() for operation, _, _ in given])
        await write(connection, given)

    if is_sqlite(db.url):
        monkeypatch.setattr(sqlite_driver, "write", batched)
    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with writing(db) as writes:
            await StepRecords(db)._write_start(writes, step, 1, ["true"], None)
    finally:
        sa.event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    writes_run = [s for s in statements if s in ("INSERT", "UPDATE")]
    if is_sqlite(db.url):  # all in one batch, none through SQLAlchemy
        assert (writes_run, batches) == ([], [["UPDATE", "UPDATE", "UPDATE", "INSERT"]])
    else:
        assert writes_run == ["UPDATE", "UPDATE", "UPDATE", "INSERT"], statements
    async with db.session() as session:
        run = await session.get(Run, run_id)
        phases = {
            p.phase_id: p
            for p in await session.exec(select(RunPhase).where(RunPhase.run_id == run_id))
        }
        kinds = [
            e.type
            for e in await session.exec(
                select(Event).where(Event.resource_id == run_id).order_by(col(Event.id))
            )
        ]
    assert run is not None and (run.stage, run.tokens_used) == ("p2.builder", 7)
    assert (phases["p1"].state, phases["p1"].recommendation) == ("COMPLETE", "approve")
    assert phases["p2"].state == "EXECUTING"
    assert kinds == ["auditor_finished", "phase_completed", "stage_started"]
