"""`/approval/*` and `/governance/*`: the build system's approval requests, served where
its contract puts them, on the same gate as every other family."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Query, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from api import decisions
from api.auth import require
from api.deps import IdempotencyKeyDep, SessionDep, TemporalDep
from api.errors import ApiError, ErrorBody, not_found
from api.route import strict_router
from api.starts import Caller, create_and_start, starter
from settings import LIMITS
from store.models import ApprovalRequest, GateRow, TelegramMessage, utcnow
from store.tokens import Principal, Scope
from strict import JsonObject, Name, Strict
from workflows.approvals import ApprovalInput, ApprovalWorkflow
from workflows.gate import GateConfig

router = strict_router(
    tags=["approvals"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)

Reader = Annotated[Principal, require(Scope.runs_read)]
Approver = Annotated[Principal, require(Scope.approvals_write)]
GOVERNANCE = "governance"
# How the build system names the ways a request was answered.
RESPONSE_METHOD = {"api": "dashboard", "telegram": "telegram", "auto": "auto", "timer": "timeout"}


class ApprovalRequestIn(Strict):
    """An outside executor asks a human. `context: governance` makes it a governance request:
    listed by `/governance/pending`, decided by `/governance/approve/{id}`, and denied
    without a reason."""

    run_id: Name = Field(description="The executor's run")
    phase_id: Name = Field(description="The phase that waits")
    context: str = Field(
        "unknown",
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        examples=["build113_risky_decision", "governance"],
    )
    decision_info: JsonObject = Field(default_factory=dict, description="Shown to the approver")
    deletion_info: JsonObject = Field(default_factory=dict, description="Shown to the approver")
    timeout_minutes: float = Field(
        15, gt=0, le=LIMITS.max_duration_s / 60, description="Then `on_timeout` decides"
    )
    on_timeout: Literal["approve", "reject", "fail"] = "reject"
    auto_approve: bool = False
    required_approvals: int = Field(1, ge=1, le=LIMITS.max_approvals)
    approvers: list[Name] = Field(default_factory=list, max_length=LIMITS.max_list_items)


class ApprovalRequested(BaseModel):
    status: Literal["pending", "approved"]
    reason: str
    approval_id: str
    telegram_sent: bool = False
    timeout_at: datetime | None


class ApprovalStatus(BaseModel):
    approval_id: str
    run_id: str
    phase_id: str
    status: str = Field(description="pending, approved, rejected or timeout")
    requested_at: datetime
    responded_at: datetime | None
    timeout_at: datetime | None
    approval_reason: str | None
    rejected_reason: str | None
    response_method: str | None
    gate_id: str | None


class PendingApproval(BaseModel):
    id: str
    run_id: str
    phase_id: str
    context: str
    requested_at: datetime
    timeout_at: datetime | None
    decision_info: dict[str, Any]
    deletion_info: dict[str, Any]
    telegram_sent: bool = Field(False, description="Its gate's message went out to Telegram")


class PendingApprovals(BaseModel):
    count: int
    requests: list[PendingApproval]


class GovernanceRequest(BaseModel):
    request_id: str
    run_id: str
    phase_id: str
    requested_paths: list[str]
    justification: str
    risk_level: str
    auto_approved: bool
    approved: bool | None
    approved_by: str | None
    created_at: datetime


class GovernancePending(BaseModel):
    count: int
    pending_requests: list[GovernanceRequest]


class GovernanceDecision(BaseModel):
    status: Literal["approved", "denied"]
    request_id: str
    message: str


async def _gate(session: SessionDep, approval_id: str) -> GateRow | None:
    rows = await session.exec(select(GateRow).where(GateRow.resource_id == approval_id))
    return rows.first()


@router.post(
    "/approval/request",
    status_code=status.HTTP_201_CREATED,
    summary="Request a human approval",
)
async def request_approval(
    body: ApprovalRequestIn, caller: Annotated[Caller, starter(Scope.runs_write)]
) -> ApprovalRequested:
    """Opens a gate that times out after `timeout_minutes` (15), rejecting by default.
    Poll `/approval/status/{approval_id}`, or decide it in `/api/v1/approvals`."""
    principal, settings = caller.principal, caller.settings
    gate = GateConfig(
        auto_approve=body.auto_approve,
        timeout_minutes=body.timeout_minutes,
        on_timeout=body.on_timeout,
        required_approvals=body.required_approvals,
        approvers=body.approvers,
        reason_required_on_reject=body.context != GOVERNANCE,
    )
    timeout_at = utcnow() + timedelta(minutes=body.timeout_minutes)

    row = await create_and_start(
        caller,
        body,
        kind="approval",
        new_row=lambda: ApprovalRequest(
            id=f"approval-{uuid.uuid4()}",
            run_id=body.run_id,
            phase_id=body.phase_id,
            context=body.context,
            decision_info=body.decision_info,
            deletion_info=body.deletion_info,
            requested_by=principal.name,
            timeout_at=timeout_at,
        ),
        created_event={
            "status": "pending",
            "message": f"approval requested by {principal.name} for {body.run_id}/{body.phase_id}",
            "payload": {"context": body.context, "run_id": body.run_id, "phase_id": body.phase_id},
        },
        workflow=ApprovalWorkflow.run,
        workflow_input=lambda row: ApprovalInput(
            approval_id=row.id,
            gate=gate.model_dump(mode="json"),
            auto_approve_allowed=settings.auto_approve,
        ),
        summary=lambda row: f"Approval for {row.run_id}/{row.phase_id}: {row.context}",
    )
    auto = body.auto_approve and settings.auto_approve
    return ApprovalRequested(
        status="approved" if auto else "pending",
        reason="auto-approved" if auto else "waiting for a human decision",
        approval_id=row.id,
        timeout_at=row.timeout_at,
    )


def _status(row: ApprovalRequest, gate: GateRow | None) -> ApprovalStatus:
    decided = gate is not None and gate.state != "open"
    return ApprovalStatus(
        approval_id=row.id,
        run_id=row.run_id,
        phase_id=row.phase_id,
        status=row.state,
        requested_at=row.created_at,
        responded_at=gate.decided_at if gate and decided else None,
        timeout_at=row.timeout_at,
        approval_reason=gate.reason if gate and gate.state == "approved" else None,
        rejected_reason=gate.reason if gate and gate.state in ("rejected", "failed") else None,
        response_method=RESPONSE_METHOD.get(gate.via or "") if gate and decided else None,
        gate_id=gate.id if gate else None,
    )


@router.get("/approval/status/{approval_id}", summary="The status of an approval request")
async def approval_status(approval_id: str, _: Reader, session: SessionDep) -> ApprovalStatus:
    row = await session.get(ApprovalRequest, approval_id)
    if row is None:
        raise not_found("approval", approval_id)
    return _status(row, await _gate(session, approval_id))


async def _pending(session: SessionDep, governance: bool) -> list[ApprovalRequest]:
    context = col(ApprovalRequest.context)
    rows = await session.exec(
        select(ApprovalRequest)
        .where(ApprovalRequest.state == "pending")
        .where(context == GOVERNANCE if governance else context != GOVERNANCE)
        .order_by(col(ApprovalRequest.created_at))
        .limit(500)
    )
    return list(rows)


@router.get("/approval/pending", summary="Approval requests waiting for a decision")
async def approval_pending(_: Reader, session: SessionDep) -> PendingApprovals:
    rows = await _pending(session, governance=False)
    sent = set(
        await session.exec(
            select(TelegramMessage.resource_id).where(
                col(TelegramMessage.resource_id).in_([r.id for r in rows]),
                col(TelegramMessage.message_id).is_not(None),
            )
        )
    )
    requests = [
        PendingApproval(
            id=r.id,
            run_id=r.run_id,
            phase_id=r.phase_id,
            context=r.context,
            requested_at=r.created_at,
            timeout_at=r.timeout_at,
            decision_info=r.decision_info,
            deletion_info=r.deletion_info,
            telegram_sent=r.id in sent,
        )
        for r in rows
    ]
    return PendingApprovals(count=len(requests), requests=requests)


def _governance(row: ApprovalRequest, gate: GateRow | None) -> GovernanceRequest:
    info = row.decision_info
    return GovernanceRequest(
        request_id=row.id,
        run_id=row.run_id,
        phase_id=row.phase_id,
        requested_paths=list(info.get("requested_paths", [])),
        justification=str(info.get("justification", "")),
        risk_level=str(info.get("risk_level", "medium")),
        auto_approved=bool(gate and gate.via == "auto"),
        approved={"approved": True, "rejected": False}.get(row.state),
        approved_by=gate.decided_by if gate else None,
        created_at=row.created_at,
    )


@router.get("/governance/pending", summary="Governance requests waiting for a decision")
async def governance_pending(_: Reader, session: SessionDep) -> GovernancePending:
    """Governance requests are approval requests made with `context: governance`."""
    rows = await _pending(session, governance=True)
    items = [_governance(r, await _gate(session, r.id)) for r in rows]
    return GovernancePending(count=len(items), pending_requests=items)


@router.post(
    "/governance/approve/{request_id}",
    summary="Approve or deny a governance request",
    responses={409: {"model": ErrorBody}},
)
async def governance_approve(
    request_id: str,
    principal: Approver,
    session: SessionDep,
    temporal: TemporalDep,
    key: IdempotencyKeyDep,
    approved: Annotated[bool, Query(description="true approves, false denies")] = True,
    user_id: Annotated[
        str | None,
        Query(max_length=LIMITS.max_name_chars, description="Ignored: the token's identity"),
    ] = None,
) -> GovernanceDecision:
    row = await session.get(ApprovalRequest, request_id)
    if row is None or row.context != GOVERNANCE:
        raise not_found("governance_request", request_id)
    gate = await _gate(session, request_id)
    if gate is None:
        raise ApiError(409, "GATE_NOT_OPEN", f"request {request_id} has no gate open yet")
    await decisions.decide(
        temporal,
        session,
        gate,
        "approve" if approved else "reject",
        principal.name,
        reason=None if approved else f"denied by {principal.name}",
        idempotency_key=key,
    )
    state: Literal["approved", "denied"] = "approved" if approved else "denied"
    return GovernanceDecision(
        status=state, request_id=request_id, message=f"request {request_id} {state}"
    )
