"""Approval and governance requests: the build system's contract on the shared gate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from store.tokens import Scope
from tests.conftest import Api, make_token

pytestmark = pytest.mark.usefixtures("worker")


async def wait_status(
    client: httpx.AsyncClient, approval_id: str, *statuses: str, need_gate: bool = True
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = (await client.get(f"/approval/status/{approval_id}")).json()
        if body["status"] in statuses and (body["gate_id"] or not need_gate):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def test_an_approval_request_waits_and_is_decided_from_the_inbox(
    admin: httpx.AsyncClient,
) -> None:
    made = await admin.post(
        "/approval/request",
        json={
            "run_id": "run-1",
            "phase_id": "p-1",
            "context": "build113_risky_decision",
            "decision_info": {"risk_level": "high"},
        },
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["status"] == "pending" and body["timeout_at"]
    approval_id = body["approval_id"]
    status = await wait_status(admin, approval_id, "pending")
    pending = (await admin.get("/approval/pending")).json()
    assert pending["count"] == 1 and pending["requests"][0]["id"] == approval_id
    inbox = (await admin.get("/api/v1/approvals")).json()["items"]
    assert [g["resource_kind"] for g in inbox] == ["approval"]
    decided = await admin.post(
        f"/api/v1/approvals/{status['gate_id']}/decide",
        json={"outcome": "reject", "reason": "too risky"},
    )
    assert decided.status_code == 200, decided.text
    final = await wait_status(admin, approval_id, "rejected")
    assert final["rejected_reason"] == "too risky" and final["response_method"] == "dashboard"
    assert (await admin.get("/approval/pending")).json()["count"] == 0


async def test_an_unanswered_request_times_out_rejected(admin: httpx.AsyncClient) -> None:
    made = await admin.post(
        "/approval/request", json={"run_id": "r", "phase_id": "p", "timeout_minutes": 0.02}
    )
    final = await wait_status(admin, made.json()["approval_id"], "timeout")
    assert final["response_method"] == "timeout"


async def test_auto_approve_answers_at_once(admin: httpx.AsyncClient) -> None:
    made = await admin.post(
        "/approval/request", json={"run_id": "r", "phase_id": "p", "auto_approve": True}
    )
    assert made.json()["status"] == "approved"
    final = await wait_status(admin, made.json()["approval_id"], "approved")
    assert final["response_method"] == "auto"


async def test_governance_requests_are_listed_and_decided(
    api: Api, admin: httpx.AsyncClient
) -> None:
    info = {"requested_paths": ["src/x.py"], "justification": "fix", "risk_level": "low"}
    made = await admin.post(
        "/approval/request",
        json={"run_id": "r", "phase_id": "p", "context": "governance", "decision_info": info},
    )
    request_id = made.json()["approval_id"]
    await wait_status(admin, request_id, "pending")
    pending = (await admin.get("/governance/pending")).json()
    assert pending["count"] == 1
    entry = pending["pending_requests"][0]
    assert entry["requested_paths"] == ["src/x.py"] and entry["approved"] is None
    reader = await make_token(api.db, "reader", Scope.runs_read)
    async with api.client(reader) as weak:
        refused = await weak.post(f"/governance/approve/{request_id}", params={"approved": "true"})
    assert refused.status_code == 403
    denied = await admin.post(
        f"/governance/approve/{request_id}", params={"approved": "false", "user_id": "someone"}
    )
    assert denied.status_code == 200, denied.text
    assert denied.json()["status"] == "denied"
    final = await wait_status(admin, request_id, "rejected")
    assert final["rejected_reason"] == "denied by admin"
    missing = await admin.post("/governance/approve/approval-nope")
    assert missing.status_code == 404


async def test_bad_requests_name_the_field(admin: httpx.AsyncClient) -> None:
    answer = await admin.post("/approval/request", json={"phase_id": "p"})
    assert answer.status_code == 422 and "body.run_id" in answer.json()["detail"]
    unknown = await admin.get("/approval/status/approval-nope")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "APPROVAL_NOT_FOUND"
