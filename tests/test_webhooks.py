"""Signed webhooks against a real receiver on loopback: what it gets, retries with backoff,
receivers that fail, hang or refuse, every attempt on record and no secret anywhere."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import col, select
from temporalio.testing import ActivityEnvironment

from activities.webhooks import WebhookIn, WebhookOut, Webhooks, signature
from settings import VERSION, Settings
from store.engine import Database
from store.models import Event, WebhookDelivery
from tests.webhook_receiver import receiving, verify

SECRET = "whsec-7c1d5e0f9a"
BODY: dict[str, Any] = {
    "task_id": "task-1",
    "status": "completed",
    "result": "Fixed the tests — all green",
    "changes_summary": {"files_changed": 3, "insertions": 45, "deletions": 12},
    "usage": {"input_tokens": 1500, "output_tokens": 500, "duration_seconds": 120},
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "finished_at": "2025-01-15T10:35:00Z",
}
FAST = [0.01, 0.01, 0.01]


def hook(url: str, **extra: Any) -> WebhookIn:
    fields: dict[str, Any] = {
        "resource_kind": "task",
        "resource_id": "task-1",
        "url": url,
        "event": "task.completed",
        "body": BODY,
        "trace_id": BODY["trace_id"],
        "backoff_seconds": FAST,
    } | extra
    return WebhookIn(**fields)


def webhooks(db: Database, settings: Settings, **update: Any) -> Webhooks:
    update = {"webhook_secret": SecretStr(SECRET), "webhook_timeout_seconds": 5.0} | update
    return Webhooks(db, settings.model_copy(update=update))


async def deliver(hooks: Webhooks, w: WebhookIn, env: ActivityEnvironment | None = None) -> Any:
    # A bound well above the test's worst case: a hang fails the test instead of stalling it.
    return await asyncio.wait_for((env or ActivityEnvironment()).run(hooks.deliver, w), 60)


async def recorded(db: Database) -> tuple[list[WebhookDelivery], list[Event]]:
    async with db.session() as session:
        rows = list(
            (await session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.id)))).all()
        )
        found = list((await session.exec(select(Event).order_by(col(Event.id)))).all())
    return rows, found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_delivery_is_signed_and_carries_the_seeds_body_and_headers(
    db: Database, settings: Settings
) -> None:
    with receiving(SECRET) as receiver:
        out = await deliver(webhooks(db, settings), hook(receiver.url))
        [got] = receiver.requests
    assert out == WebhookOut(delivered=True, attempts=1, status_code=200)
    assert got.method == "POST" and got.path == "/hook"
    assert got.body == json.dumps(BODY, separators=(",", ":")).encode()
    assert json.loads(got.body) == BODY
    assert got.signature_valid is True
    assert verify(got.body, got.headers["X-Signature-256"], SECRET)
    assert got.headers["X-Signature-256"] == signature(SECRET, got.body)
    assert not verify(got.body, got.headers["X-Signature-256"], "another secret")
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Pilothouse-Event"] == "task.completed"
    assert got.headers["X-Trace-ID"] == BODY["trace_id"]
    assert got.headers["User-Agent"] == f"Pilothouse-Webhook/{VERSION}"
    [row], [event] = await recorded(db)
    assert (row.attempt, row.status_code, row.delivered, row.error) == (1, 200, True, None)
    assert (row.resource_kind, row.resource_id, row.event) == ("task", "task-1", "task.completed")
    assert row.url == receiver.url
    assert event.type == "webhook.delivered" and event.resource_id == "task-1"
    assert event.payload["attempt"] == 1 and event.payload["status_code"] == 200


async def test_a_500_is_retried_and_delivered_on_the_second_attempt(
    db: Database, settings: Settings
) -> None:
    with receiving(SECRET) as receiver:
        receiver.fail(1, status=500)
        out = await deliver(webhooks(db, settings), hook(receiver.url))
        first, second = receiver.requests
    assert out == WebhookOut(delivered=True, attempts=2, status_code=200)
    # A retry sends the very same signed bytes.
    assert first.body == second.body and second.signature_valid
    rows, found = await recorded(db)
    assert [(r.attempt, r.status_code, r.delivered) for r in rows] == [
        (1, 500, False),
        (2, 200, True),
    ]
    assert rows[0].error == "HTTP 500"
    assert [e.type for e in found] == ["webhook.failed_attempt", "webhook.delivered"]
    assert [e.payload["attempt"] for e in found] == [1, 2]
    assert found[0].payload["status_code"] == 500 and found[0].payload["error"] == "HTTP 500"


async def test_a_hanging_receiver_times_out_each_attempt_and_never_holds_the_task(
    db: Database, settings: Settings
) -> None:
    with receiving(SECRET) as receiver:
        receiver.hang()
        hooks = webhooks(db, settings, webhook_timeout_seconds=0.3)
        out = await deliver(hooks, hook(receiver.url, backoff_seconds=[0.01, 0.01]))
        await receiver.wait_for(3)
    assert out == WebhookOut(delivered=False, attempts=3, status_code=None)
    rows, found = await recorded(db)
    assert [r.attempt for r in rows] == [1, 2, 3]
    assert all(r.error == "no answer within 0.3 s" and not r.delivered for r in rows)
    assert [e.type for e in found] == [
        "webhook.failed_attempt",
        "webhook.failed_attempt",
        "webhook.gave_up",
    ]
    assert found[-1].status == "gave_up"


async def test_a_refused_connection_is_recorded_and_retried(
    db: Database, settings: Settings
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    out = await deliver(webhooks(db, settings), hook(url, backoff_seconds=[0.01]))
    assert out == WebhookOut(delivered=False, attempts=2, status_code=None)
    rows, found = await recorded(db)
    assert [r.attempt for r in rows] == [1, 2]
    assert all(r.error and r.status_code is None for r in rows)
    assert [e.type for e in found] == ["webhook.failed_attempt", "webhook.gave_up"]


async def test_an_unresolvable_host_is_a_failed_attempt(db: Database, settings: Settings) -> None:
    out = await deliver(
        webhooks(db, settings), hook("http://no-such-host.invalid/hook", backoff_seconds=[])
    )
    assert out == WebhookOut(delivered=False, attempts=1, status_code=None)
    [row], [event] = await recorded(db)
    assert row.error and event.type == "webhook.gave_up"


async def test_redirects_are_not_followed(db: Database, settings: Settings) -> None:
    with receiving(SECRET) as receiver:
        receiver.fail(5, status=302)
        out = await deliver(webhooks(db, settings), hook(receiver.url, backoff_seconds=[]))
        assert len(receiver.requests) == 1
    assert out == WebhookOut(delivered=False, attempts=1, status_code=302)
    [row], _ = await recorded(db)
    assert row.error == "HTTP 302 (redirects are not followed)"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "file:///etc/passwd", "not a url"])
async def test_a_url_that_is_not_http_gives_up_at_once(
    db: Database, settings: Settings, url: str
) -> None:
    out = await deliver(webhooks(db, settings), hook(url))
    assert out == WebhookOut(delivered=False, attempts=1, status_code=None)
    [row], [event] = await recorded(db)
    assert row.error and event.type == "webhook.gave_up"
    if url.startswith(("ftp", "file")):
        assert "only http and https" in row.error


async def test_no_secret_reaches_a_row_or_an_event(db: Database, settings: Settings) -> None:
    with receiving(SECRET) as receiver:
        receiver.fail(1)
        secret_url = receiver.url.replace("http://", "http://alice:pa55word@") + "?token=qs-t0ken"
        out = await deliver(webhooks(db, settings), hook(secret_url))
        first, second = receiver.requests
    assert out.delivered and out.attempts == 2
    # The receiver was sent the whole URL; only the records leave its secrets out.
    assert second.path == "/hook?token=qs-t0ken"
    assert second.headers["Authorization"].startswith("Basic ")
    rows, found = await recorded(db)
    assert all(r.url == receiver.url for r in rows)
    text = json.dumps(
        [r.model_dump(mode="json") for r in rows] + [e.model_dump(mode="json") for e in found]
    )
    for secret in (SECRET, "pa55word", "alice", "qs-t0ken", first.headers["X-Signature-256"]):
        assert secret not in text


async def test_without_a_secret_no_signature_header_is_sent(
    db: Database, settings: Settings
) -> None:
    with receiving() as receiver:
        out = await deliver(webhooks(db, settings, webhook_secret=None), hook(receiver.url))
        [got] = receiver.requests
    assert out.delivered
    assert "X-Signature-256" not in got.headers
    assert got.headers["X-Pilothouse-Event"] == "task.completed"


async def wait_for_rows(db: Database, count: int, seconds: float = 10) -> list[WebhookDelivery]:
    deadline = time.monotonic() + seconds
    while len(rows := (await recorded(db))[0]) < count:
        assert time.monotonic() < deadline, f"{len(rows)} of {count} attempts recorded"
        await asyncio.sleep(0.02)
    return rows


async def test_a_cancel_during_the_backoff_ends_the_delivery(
    db: Database, settings: Settings
) -> None:
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    with receiving(SECRET) as receiver:
        receiver.fail(10)
        running = asyncio.create_task(
            deliver(webhooks(db, settings), hook(receiver.url, backoff_seconds=[3600]), env)
        )
        await wait_for_rows(db, 1)
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert len(receiver.requests) == 1
    assert beats, "it never heartbeated, so a cancel could not reach it"
    [row], [event] = await recorded(db)
    assert row.status_code == 500 and event.type == "webhook.failed_attempt"


async def test_a_retried_activity_continues_the_attempts_already_recorded(
    db: Database, settings: Settings
) -> None:
    hooks = webhooks(db, settings)
    with receiving(SECRET) as receiver:
        receiver.hang()
        w = hook(receiver.url, backoff_seconds=[0.01, 0.01])
        first_try = ActivityEnvironment()
        running = asyncio.create_task(deliver(hooks, w, first_try))
        await receiver.wait_for(1)
        # The worker is told to stop in the middle of attempt 1; the retry goes on.
        first_try.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        receiver.hanging = False
        retry = ActivityEnvironment()
        retry.info = dataclasses.replace(retry.info, attempt=2)
        out = await deliver(hooks, w, retry)
        assert out == WebhookOut(delivered=True, attempts=2, status_code=200)
        # A third try finds it delivered and sends nothing more.
        again = ActivityEnvironment()
        again.info = dataclasses.replace(again.info, attempt=3)
        assert await deliver(hooks, w, again) == out
        assert len(receiver.requests) == 2
    rows, found = await recorded(db)
    assert [(r.attempt, r.delivered) for r in rows] == [(1, False), (2, True)]
    assert rows[0].error == "canceled before an answer"
    assert [e.status for e in found] == ["canceled", "delivered"]


async def test_another_activity_for_the_same_resource_starts_at_attempt_one(
    db: Database, settings: Settings
) -> None:
    hooks = webhooks(db, settings)
    with receiving(SECRET) as receiver:
        await deliver(hooks, hook(receiver.url))
        other = ActivityEnvironment()
        other.info = dataclasses.replace(other.info, activity_id="7", attempt=2)
        out = await deliver(hooks, hook(receiver.url), other)
    assert out == WebhookOut(delivered=True, attempts=1, status_code=200)


def test_the_receivers_check_refuses_a_tampered_body() -> None:
    body = json.dumps(BODY, separators=(",", ":")).encode()
    assert verify(body, signature(SECRET, body), SECRET)
    assert not verify(body + b" ", signature(SECRET, body), SECRET)
