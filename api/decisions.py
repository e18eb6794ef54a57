"""Deciding a gate from the API: the one path every family's approve, reject and the inbox
take. It checks the input schema, sends the `decide` Update, maps refusals to HTTP, and
answers once the decision is on record."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import jsonschema
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError
from api.metrics import DECISIONS
from store.models import Decision, GateRow
from workflows.gate import DecisionIn, DecisionOut, Outcome, Via

T = TypeVar("T")

log = logging.getLogger("pilothouse.decisions")

# The workflow hands a decision to the activity that starts its next step, which writes it
# within milliseconds; the wait is bounded because a stopped worker may write it later.
RECORD_WAIT_S = 5.0

# Refusals raised in workflows carry their error code as the ApplicationError type.
STATUS_BY_TYPE = {
    "GATE_NOT_OPEN": 409,
    "GATE_ALREADY_DECIDED": 409,
    "DUPLICATE_APPROVER": 409,
    "NOT_AN_APPROVER": 403,
    "REASON_REQUIRED": 422,
    "JOB_NOT_PAUSED": 409,
    "GATE_AMBIGUOUS": 409,
    "PHASE_NOT_FOUND": 404,
    "PHASE_NOT_AWAITING": 409,
    "TASK_NOT_AWAITING": 409,
    "TASK_NOT_READY": 409,
    "TASK_RUNNING": 409,
    "PULL_REQUEST_FAILED": 502,
    "NO_CHANGES": 409,
}


async def updating(call: Awaitable[T]) -> T:
    """Await an Update and turn Temporal's refusals into API errors."""
    try:
        return await call
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type in STATUS_BY_TYPE:
            raise ApiError(STATUS_BY_TYPE[cause.type], cause.type, cause.message) from None
        raise ApiError(409, "UPDATE_REFUSED", str(cause or exc)) from None
    except RPCError as exc:
        raise refusal(exc) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
        if isinstance(exc.__cause__, asyncio.CancelledError):
            raise exc.__cause__ from None  # the request was cancelled: no answer is due
        # No answer in time (its worker is away); the workflow may still take it later.
        raise ApiError(
            503, "TEMPORAL_UNAVAILABLE", "the workflow did not answer in time; retry the call"
        ) from None


def refusal(exc: RPCError) -> ApiError:
    """Temporal's answer as an API error: a refusal of the input is the caller's (4xx), and
    only a Temporal that does not answer is an outage (503)."""
    if exc.status == RPCStatusCode.NOT_FOUND:
        return ApiError(409, "RESOURCE_NOT_RUNNING", "the workflow has ended")
    if exc.status == RPCStatusCode.INVALID_ARGUMENT:
        # Payloads over Temporal's size limit are refused this way: the body is too large.
        return ApiError(413, "REFUSED_BY_TEMPORAL", f"body: Temporal refused it: {exc.message}")
    if exc.status == RPCStatusCode.FAILED_PRECONDITION:
        return ApiError(409, "RESOURCE_NOT_RUNNING", f"the workflow cannot take it: {exc.message}")
    return ApiError(503, "TEMPORAL_UNAVAILABLE", f"Temporal did not answer: {exc}")


def check_input(gate: GateRow, outcome: Outcome, data: dict[str, Any] | None) -> None:
    schema = gate.config.get("input_schema")
    if not schema or (outcome == "reject" and data is None):
        return
    validator = jsonschema.Draft202012Validator(schema)
    problems = sorted(validator.iter_errors(data or {}), key=lambda e: list(e.absolute_path))
    if problems:
        detail = "; ".join(
            "input" + "".join(f".{p}" for p in e.absolute_path) + f": {e.message}" for e in problems
        )
        raise ApiError(422, "INVALID_DECISION_INPUT", detail)


async def decide(
    temporal: Client,
    session: AsyncSession,
    gate: GateRow,
    outcome: Outcome,
    by: str,
    *,
    via: Via = "api",
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> DecisionOut:
    if idempotency_key is not None:
        # A repeated key goes through (Temporal answers it with the first result), but only
        # with the request it was first used for.
        earlier = await session.get(Decision, f"{gate.resource_id}/{idempotency_key}")
        if earlier is not None and (
            earlier.gate_id,
            earlier.outcome,
            earlier.by,
            earlier.reason,
            earlier.input,
        ) != (gate.id, outcome, by, reason, data):
            raise ApiError(
                422,
                "IDEMPOTENCY_KEY_REUSED",
                "header.Idempotency-Key: used before for another decision "
                f"({earlier.outcome} of gate {earlier.gate_id})",
            )
    elif gate.state != "open":
        raise ApiError(409, "GATE_ALREADY_DECIDED", f"gate {gate.id} is already {gate.state}")
    check_input(gate, outcome, data)
    handle = temporal.get_workflow_handle(gate.resource_id)
    update_id = idempotency_key or f"decision-{uuid.uuid4()}"
    try:
        result: DecisionOut = await updating(
            handle.execute_update(
                "decide",
                DecisionIn(
                    gate_id=gate.id, outcome=outcome, by=by, via=via, reason=reason, input=data
                ),
                id=update_id,
                result_type=DecisionOut,
            )
        )
    except ApiError as exc:
        # A workflow that ends while Updates wait (another decision won and it went on
        # to finish) aborts them: the answer is about the gate, not about Temporal.
        if exc.status_code not in (409, 503):
            raise
        await session.refresh(gate)
        if gate.state != "open":
            raise ApiError(
                409, "GATE_ALREADY_DECIDED", f"gate {gate.id} is already {gate.state}"
            ) from None
        raise
    DECISIONS.labels(outcome, via).inc()
    await on_record(session, f"{gate.resource_id}/{update_id}")
    return result


async def on_record(session: AsyncSession, decision_id: str) -> None:
    """Wait until the decision's row is written, so that what the caller reads next (the
    inbox, the job, the gate) already shows it."""
    deadline = time.monotonic() + RECORD_WAIT_S
    pause = 0.002
    while True:
        # Each read sees the latest commit: SQLite reads outside a transaction, and
        # PostgreSQL's read committed takes a new snapshot per statement.
        if await session.get(Decision, decision_id) is not None:
            return
        if time.monotonic() >= deadline:
            log.warning("decision %s is applied but not yet on record", decision_id)
            return
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)
