"""`/api/v1/approvals`: one inbox for the open gates of every family, and deciding one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Query, Request
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api import decisions
from api.auth import require
from api.deps import IdempotencyKeyDep, SessionDep, TemporalDep
from api.errors import ErrorBody, not_found
from api.paging import Page, PageQuery, page
from api.route import strict_router
from store.models import GateRow
from store.tokens import Principal, Scope
from strict import JsonObject, Strict, Text
from workflows.gate import DecisionOut

router = strict_router(
    prefix="/api/v1",
    tags=["approvals"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)


class GatePublic(BaseModel):
    gate_id: str
    resource_kind: str
    resource_id: str
    stage: str
    state: str = Field(
        description="open, approved, rejected, or failed or canceled (with its resource)"
    )
    opened_at: datetime
    deadline: datetime | None
    approvals: list[str]
    approvals_needed: int
    approvals_remaining: int
    decided_at: datetime | None
    decided_by: str | None
    via: str | None
    reason: str | None
    config: dict[str, Any]


def gate_public(gate: GateRow) -> GatePublic:
    return GatePublic(
        gate_id=gate.id,
        resource_kind=gate.resource_kind,
        resource_id=gate.resource_id,
        stage=gate.stage,
        state=gate.state,
        opened_at=gate.opened_at,
        deadline=gate.deadline,
        approvals=gate.approvals,
        approvals_needed=gate.approvals_needed,
        approvals_remaining=max(gate.approvals_needed - len(gate.approvals), 0)
        if gate.state == "open"
        else 0,
        decided_at=gate.decided_at,
        decided_by=gate.decided_by,
        via=gate.via,
        reason=gate.reason,
        config=gate.config,
    )


class DecideRequest(Strict):
    outcome: Literal["approve", "reject"]
    reason: Text | None = Field(None, description="Why; rejecting needs one unless the gate says")
    input: JsonObject | None = Field(None, description="Checked against the gate's input schema")


GATE_STATES = {"pending": "open"}


@router.get("/approvals", summary="List gates: the approval inbox")
async def list_gates(
    request: Request,
    _: Annotated[Principal, require()],
    session: SessionDep,
    params: PageQuery,
    state: Annotated[
        Literal["pending", "open", "approved", "rejected", "failed", "canceled"] | None,
        Query(description="`pending` (or `open`) lists what waits for a decision"),
    ] = "pending",
    resource_kind: Annotated[
        str | None, Query(max_length=20, description="job, run, task, approval")
    ] = None,
) -> Page[GatePublic]:
    """Open gates first by age, across every family, with what each still needs."""
    query = select(GateRow)
    if state:
        query = query.where(GateRow.state == GATE_STATES.get(state, state))
    if resource_kind:
        query = query.where(GateRow.resource_kind == resource_kind)
    total = (await session.exec(select(sa.func.count()).select_from(query.subquery()))).one()
    rows = await session.exec(
        query.order_by(col(GateRow.opened_at)).offset(params.skip).limit(params.limit)
    )
    return page(request, [gate_public(g) for g in rows], int(total), params)


@router.post(
    "/approvals/{gate_id}/decide",
    summary="Decide one gate",
    responses={409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def decide_gate(
    gate_id: str,
    body: DecideRequest,
    principal: Annotated[Principal, require(Scope.approvals_write)],
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
) -> DecisionOut:
    gate = await session.get(GateRow, gate_id)
    if gate is None:
        raise not_found("gate", gate_id)
    return await decisions.decide(
        temporal,
        session,
        gate,
        body.outcome,
        principal.name,
        reason=body.reason,
        data=body.input,
        idempotency_key=key,
    )
