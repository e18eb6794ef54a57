"""Telegram approval buttons, end to end: a real worker, Temporal, the API over HTTP, and a
fake Bot API on loopback that records what python-telegram-bot sends it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import select
from temporalio.api.history.v1 import History
from temporalio.client import Client

from activities.notify import notifying
from api.app import create_app
from settings import Settings
from store.models import Decision, Event, GateRow
from tests.conftest import Api
from tests.fake_telegram import Call, Failure, FakeBotApi
from tests.jobs_helpers import GATE, create_job, event_types, stage, wait_state
from tests.test_replay import HISTORIES, REPLAYER
from tests.test_routes import walk

pytestmark = pytest.mark.usefixtures("worker")

# Recognizable, so a leak anywhere is found by searching for it.
TOKEN = "424242:SECRET-pilothouse-bot-token-never-shown"
SECRET = "webhook-secret_0123"
CHAT = -100777
ALICE, BOB, STRANGER = 1001, 1002, 6666


@pytest.fixture
async def bot_api() -> AsyncIterator[FakeBotApi]:
    async with FakeBotApi.serving() as fake:
        yield fake


@pytest.fixture
def settings(settings: Settings, bot_api: FakeBotApi) -> Settings:
    return settings.model_copy(
        update={
            "telegram_bot_token": SecretStr(TOKEN),
            "telegram_chat_ids": [CHAT],
            "telegram_webhook_secret": SecretStr(SECRET),
            "telegram_approvers": {ALICE: "alice", BOB: "bob"},
            "telegram_api_base": bot_api.base_url,
            "telegram_first_retry_seconds": 0.2,
            "telegram_give_up_seconds": 10,
            "public_url": "https://pilothouse.example",
            "temporal_ui_url": "https://temporal.example",
        }
    )


async def webhook(api: Api, update: dict[str, Any], secret: str | None = SECRET) -> httpx.Response:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        return await client.post("/telegram/webhook", json=update, headers=headers)


async def gate_message(bot_api: FakeBotApi, resource_id: str) -> Call:
    [sent] = await bot_api.wait_for("sendMessage", lambda c: resource_id in c.params["text"])
    return sent


def button(sent: Call, label: str) -> str:
    data: str = next(b["callback_data"] for b in sent.buttons if b["text"] == label)
    return data


async def decisions(api: Api, gate_id: str) -> list[Decision]:
    async with api.db.session() as session:
        return list(await session.exec(select(Decision).where(Decision.gate_id == gate_id)))


async def gate_row(api: Api, gate_id: str) -> GateRow:
    async with api.db.session() as session:
        gate = await session.get(GateRow, gate_id)
    assert gate is not None
    return gate


def edits_of(sent: Call) -> Any:
    return lambda c: c.params["message_id"] == sent.result["message_id"]


async def assert_no_token(
    api: Api, caplog: pytest.LogCaptureFixture, answers: list[httpx.Response]
) -> None:
    """The token is in every URL python-telegram-bot calls, and nowhere else."""
    async with api.db.session() as session:
        rows = list(await session.exec(select(Event)))
        gates = list(await session.exec(select(GateRow)))
    assert rows and all(TOKEN not in f"{e.message} {e.payload}" for e in rows)
    assert gates and all(TOKEN not in repr(g) for g in gates)
    assert all(TOKEN not in r.text and TOKEN not in str(r.headers) for r in answers)
    assert caplog.records and TOKEN not in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_a_press_by_an_approver_continues_the_job_and_edits_the_message(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job_id = await create_job(admin, stage("build", gate=GATE), stage("deploy"))
    job = await wait_state(admin, job_id, "needs_approval")
    gate_id = job["open_gate"]["gate_id"]
    sent = await gate_message(bot_api, job_id)
    assert sent.params["chat_id"] == CHAT
    text = sent.params["text"]
    assert "Stage: build" in text
    assert f"https://pilothouse.example/api/v1/jobs/{job_id}" in text
    assert f"https://temporal.example/namespaces/default/workflows/{job_id}" in text
    assert [b["text"] for b in sent.buttons] == ["Approve", "Reject"]
    # Opaque and within Telegram's 64 bytes, whatever the gate id's length.
    assert all(len(b["callback_data"].encode()) <= 64 for b in sent.buttons)
    assert all(gate_id not in b["callback_data"] for b in sent.buttons)

    pressed = bot_api.press(ALICE, button(sent, "Approve"), sent)
    answer = await webhook(api, pressed)
    assert answer.status_code == 200, answer.text
    [answered] = bot_api.called("answerCallbackQuery")
    assert answered.params["callback_query_id"] == pressed["callback_query"]["id"]
    assert answered.params["text"] == "Approved."
    done = await wait_state(admin, job_id, "completed")
    assert (done["gates"][0]["decided_by"], done["gates"][0]["via"]) == ("alice", "telegram")
    [decision] = await decisions(api, gate_id)
    assert decision.id == f"{job_id}/tg-{pressed['callback_query']['id']}"
    [edited] = await bot_api.wait_for("editMessageText", edits_of(sent))
    assert edited.params["chat_id"] == CHAT
    assert edited.params["text"].startswith(text)
    assert "Approved by alice via telegram at " in edited.params["text"]
    assert "reply_markup" not in edited.params  # the buttons are gone
    assert "notify.failed" not in await event_types(admin, job_id)
    assert all(call.token == TOKEN for call in bot_api.calls)
    read = await admin.get(f"/api/v1/jobs/{job_id}")
    await assert_no_token(api, caplog, [answer, read])


async def test_a_wrong_secret_is_403_and_decides_nothing(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    job_id = await create_job(admin, stage("build", gate=GATE))
    gate_id = (await wait_state(admin, job_id, "needs_approval"))["open_gate"]["gate_id"]
    sent = await gate_message(bot_api, job_id)
    pressed = bot_api.press(ALICE, button(sent, "Approve"), sent)
    for secret in ("wrong", None, SECRET + "x", ""):
        answer = await webhook(api, pressed, secret)
        assert answer.status_code == 403, (secret, answer.text)
        assert answer.json()["error_code"] == "BAD_WEBHOOK_SECRET"
    assert bot_api.called("answerCallbackQuery") == []
    assert (await gate_row(api, gate_id)).state == "open"
    assert await decisions(api, gate_id) == []
    assert (await admin.post(f"/api/v1/jobs/{job_id}/approve")).status_code == 200
    await wait_state(admin, job_id, "completed")


async def test_an_unknown_user_is_refused_and_decides_nothing(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    job_id = await create_job(admin, stage("build", gate=GATE))
    gate_id = (await wait_state(admin, job_id, "needs_approval"))["open_gate"]["gate_id"]
    sent = await gate_message(bot_api, job_id)
    for label in ("Approve", "Reject"):
        answer = await webhook(api, bot_api.press(STRANGER, button(sent, label), sent))
        assert answer.status_code == 200, answer.text
    refusals = bot_api.called("answerCallbackQuery")
    assert [r.params["text"] for r in refusals] == [
        "You are not a Pilothouse approver: nothing was decided."
    ] * 2
    assert all(r.params["show_alert"] is True for r in refusals)
    assert bot_api.called("sendMessage", lambda c: "Why reject" in c.params["text"]) == []
    assert (await gate_row(api, gate_id)).state == "open"
    assert await decisions(api, gate_id) == []
    assert (await admin.post(f"/api/v1/jobs/{job_id}/approve")).status_code == 200
    await wait_state(admin, job_id, "completed")


async def test_the_same_callback_delivered_twice_makes_one_decision(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    job_id = await create_job(admin, stage("build", gate=GATE), stage("after"))
    gate_id = (await wait_state(admin, job_id, "needs_approval"))["open_gate"]["gate_id"]
    sent = await gate_message(bot_api, job_id)
    pressed = bot_api.press(BOB, button(sent, "Approve"), sent)
    # Telegram retries a webhook it got no answer from: at once, and again later.
    answers = await asyncio.gather(webhook(api, pressed), webhook(api, pressed))
    assert [a.status_code for a in answers] == [200, 200]
    await wait_state(admin, job_id, "completed")
    assert (await webhook(api, pressed)).status_code == 200
    assert [d.id for d in await decisions(api, gate_id)] == [
        f"{job_id}/tg-{pressed['callback_query']['id']}"
    ]
    # Each delivery is told what the press did, never that it was refused.
    said = [c.params["text"] for c in bot_api.called("answerCallbackQuery")]
    assert said == ["Approved."] * 3
    assert (await event_types(admin, job_id)).count("gate_approved") == 1


async def test_a_decision_through_the_api_edits_the_telegram_message(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    job_id = await create_job(admin, stage("build", gate=GATE))
    await wait_state(admin, job_id, "needs_approval")
    sent = await gate_message(bot_api, job_id)
    answer = await admin.post(f"/api/v1/jobs/{job_id}/reject", json={"reason": "not today"})
    assert answer.status_code == 200, answer.text
    [edited] = await bot_api.wait_for("editMessageText", edits_of(sent))
    assert "Rejected by admin via api at " in edited.params["text"]
    assert "Reason: not today" in edited.params["text"]
    assert "reply_markup" not in edited.params
    await wait_state(admin, job_id, "paused")
    # A press on the old message is told the gate is decided, and changes nothing.
    assert (await webhook(api, bot_api.press(ALICE, button(sent, "Approve"), sent))).is_success
    [refused] = bot_api.called("answerCallbackQuery")
    assert refused.params["text"].startswith("Nothing was decided: ")
    assert "already rejected" in refused.params["text"]
    assert (await admin.get(f"/api/v1/jobs/{job_id}")).json()["state"] == "paused"


async def test_a_reject_with_a_reason_goes_through_force_reply(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    job_id = await create_job(admin, stage("build", gate=GATE))
    gate_id = (await wait_state(admin, job_id, "needs_approval"))["open_gate"]["gate_id"]
    sent = await gate_message(bot_api, job_id)
    pressed = bot_api.press(BOB, button(sent, "Reject"), sent)
    assert (await webhook(api, pressed)).status_code == 200
    [asked] = bot_api.called("sendMessage", lambda c: "Why reject" in c.params["text"])
    assert asked.params["reply_markup"]["force_reply"] is True
    assert asked.params["reply_parameters"]["message_id"] == sent.result["message_id"]
    [answered] = bot_api.called("answerCallbackQuery")
    assert "reason" in answered.params["text"]
    # Telegram's retry of the press asks nothing twice; the gate waits for the reason.
    assert (await webhook(api, pressed)).status_code == 200
    assert len(bot_api.called("sendMessage", lambda c: "Why reject" in c.params["text"])) == 1
    assert (await gate_row(api, gate_id)).state == "open"

    stranger = bot_api.reply(STRANGER, asked, "I say no")
    assert (await webhook(api, stranger)).status_code == 200
    assert (await gate_row(api, gate_id)).state == "open"
    reply = bot_api.reply(BOB, asked, "wrong target")
    assert (await webhook(api, reply)).status_code == 200
    paused = await wait_state(admin, job_id, "paused")
    gate = paused["gates"][0]
    assert (gate["state"], gate["decided_by"], gate["via"], gate["reason"]) == (
        "rejected",
        "bob",
        "telegram",
        "wrong target",
    )
    [edited] = await bot_api.wait_for("editMessageText", edits_of(sent))
    assert "Rejected by bob via telegram" in edited.params["text"]
    assert "Reason: wrong target" in edited.params["text"]
    [told] = bot_api.called("sendMessage", lambda c: "not a Pilothouse" in c.params["text"])
    assert told.params["reply_parameters"]["message_id"] == stranger["message"]["message_id"]
    assert len(await decisions(api, gate_id)) == 1


async def test_a_reject_without_a_required_reason_decides_at_the_press(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    gate = {"required": True, "reason_required_on_reject": False}
    job_id = await create_job(admin, stage("build", gate=gate))
    await wait_state(admin, job_id, "needs_approval")
    sent = await gate_message(bot_api, job_id)
    assert (await webhook(api, bot_api.press(ALICE, button(sent, "Reject"), sent))).is_success
    await wait_state(admin, job_id, "paused")
    assert bot_api.called("sendMessage", lambda c: "Why reject" in c.params["text"]) == []


async def test_a_bot_api_that_answers_429_then_500_does_not_fail_the_job(
    admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    bot_api.fail(
        "sendMessage",
        Failure(429, "Too Many Requests: retry after 1", retry_after=1),
        Failure(500, "Internal Server Error"),
    )
    job_id = await create_job(admin, stage("build", gate=GATE), stage("deploy"))
    await wait_state(admin, job_id, "needs_approval")
    calls = await bot_api.wait_for("sendMessage", count=3)
    # The retry after the 429 waited at least the second it was told to.
    assert calls[1].at - calls[0].at >= 1
    assert [b["text"] for b in calls[2].buttons] == ["Approve", "Reject"]
    assert (await admin.post(f"/api/v1/jobs/{job_id}/approve")).status_code == 200
    await wait_state(admin, job_id, "completed")
    await bot_api.wait_for("editMessageText")
    assert "notify.failed" not in await event_types(admin, job_id)


async def test_a_bot_api_that_stays_down_is_given_up_on_and_the_gate_stays_decidable(
    api: Api,
    admin: httpx.AsyncClient,
    bot_api: FakeBotApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bot_api.fail("sendMessage", *[Failure(502, "Bad Gateway")] * 100)
    seen: list[httpx.Response] = []
    job_id = await create_job(admin, stage("build", gate=GATE), stage("deploy"))
    await wait_state(admin, job_id, "needs_approval")
    deadline = time.monotonic() + 60
    while "notify.failed" not in await event_types(admin, job_id):
        assert time.monotonic() < deadline, "no notify.failed event"
        await asyncio.sleep(0.1)
    assert len(bot_api.called("sendMessage")) >= 2
    seen.append(await admin.post(f"/api/v1/jobs/{job_id}/approve"))
    assert seen[-1].status_code == 200
    await wait_state(admin, job_id, "completed")
    seen.append(await admin.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 500}))
    [failed] = [e for e in seen[-1].json()["items"] if e["type"] == "notify.failed"]
    assert "Bad Gateway" in failed["payload"]["error"]
    assert bot_api.called("editMessageText") == []  # nothing went out to edit

    assert all(call.token == TOKEN for call in bot_api.calls)
    message = {"message_id": 1, "date": 0, "chat": {"id": CHAT, "type": "group"}}
    for press in (bot_api.press(STRANGER, "nope:a", message), {"update_id": 1}):
        seen.append(await webhook(api, press))
    seen.append(await webhook(api, {"update_id": 2}, secret="wrong"))
    await assert_no_token(api, caplog, seen)
    assert any("Bad Gateway" in r.getMessage() for r in caplog.records)


async def test_a_gate_that_needs_reminders_gets_them_in_telegram(
    admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    gate = {"required": True, "reminder_every_seconds": 1}
    job_id = await create_job(admin, stage("build", gate=gate))
    await wait_state(admin, job_id, "needs_approval")
    sent = await gate_message(bot_api, job_id)
    [reminder] = await bot_api.wait_for(
        "sendMessage", lambda c: c.params["text"].startswith("⏰ Still waiting")
    )
    assert job_id in reminder.params["text"]
    assert reminder.params["reply_parameters"]["message_id"] == sent.result["message_id"]
    assert "reply_markup" not in reminder.params
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    await wait_state(admin, job_id, "completed")


async def test_a_gate_that_times_out_edits_the_message(
    admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    gate = {"required": True, "timeout_seconds": 1, "on_timeout": "reject"}
    job_id = await create_job(admin, stage("build", gate=gate))
    sent = await gate_message(bot_api, job_id)
    assert "Deadline: " in sent.params["text"] and ", then reject." in sent.params["text"]
    [edited] = await bot_api.wait_for("editMessageText", edits_of(sent))
    assert "❌ Rejected by timer via timer at " in edited.params["text"]
    assert "Reason: no decision within 1 s" in edited.params["text"]
    await wait_state(admin, job_id, "paused")


async def test_a_job_canceled_at_its_gate_edits_the_message(
    admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    job_id = await create_job(admin, stage("build", gate=GATE))
    await wait_state(admin, job_id, "needs_approval")
    sent = await gate_message(bot_api, job_id)
    assert (await admin.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
    [edited] = await bot_api.wait_for("editMessageText", edits_of(sent))
    assert "⏹ Canceled at " in edited.params["text"]
    await wait_state(admin, job_id, "canceled")


async def test_an_approval_request_is_decided_from_telegram(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    made = await admin.post("/approval/request", json={"run_id": "run-9", "phase_id": "p-1"})
    assert made.status_code == 201, made.text
    approval_id = made.json()["approval_id"]
    sent = await gate_message(bot_api, approval_id)
    assert f"https://pilothouse.example/approval/status/{approval_id}" in sent.params["text"]
    assert "Deadline: " in sent.params["text"]
    pending = (await admin.get("/approval/pending")).json()["requests"]
    assert [r["telegram_sent"] for r in pending] == [True]
    assert (await webhook(api, bot_api.press(ALICE, button(sent, "Approve"), sent))).is_success
    status = (await admin.get(f"/approval/status/{approval_id}")).json()
    assert (status["status"], status["response_method"]) == ("approved", "telegram")
    await bot_api.wait_for("editMessageText", edits_of(sent))


async def test_a_history_with_telegram_replays(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi, client: Client
) -> None:
    gate = {"required": True, "reminder_every_seconds": 1}
    job_id = await create_job(admin, stage("a", gate=gate), stage("b"))
    sent = await gate_message(bot_api, job_id)
    await bot_api.wait_for("sendMessage", lambda c: "Still waiting" in c.params["text"])
    assert (await webhook(api, bot_api.press(ALICE, button(sent, "Approve"), sent))).is_success
    await wait_state(admin, job_id, "completed")
    history = await client.get_workflow_handle(job_id).fetch_history()
    kinds = {e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events}
    assert {"notify.gate_opened", "notify.gate_reminder", "notify.gate_closed"} <= kinds
    await REPLAYER.replay_workflow(history)
    if os.environ.get("PILOTHOUSE_RECORD_HISTORIES"):
        recorded = History(events=history.events).SerializeToString()
        (HISTORIES / "job_telegram_remind_press.pb").write_bytes(recorded)


async def cli(settings: Settings, *args: str) -> tuple[int, str]:
    """The `pilothouse` command as its own process, without blocking this event loop (the
    fake Bot API and the worker run in it)."""
    assert settings.telegram_bot_token and settings.telegram_webhook_secret
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
    env.update(
        PILOTHOUSE_DATABASE_URL=settings.db_url,
        PILOTHOUSE_TEMPORAL_ADDRESS=settings.temporal_target,
        PILOTHOUSE_TASK_QUEUE=settings.task_queue,
        PILOTHOUSE_TELEGRAM_BOT_TOKEN=settings.telegram_bot_token.get_secret_value(),
        PILOTHOUSE_TELEGRAM_WEBHOOK_SECRET=settings.telegram_webhook_secret.get_secret_value(),
        PILOTHOUSE_TELEGRAM_CHAT_IDS=",".join(str(c) for c in settings.telegram_chat_ids),
        PILOTHOUSE_TELEGRAM_APPROVERS=json.dumps({ALICE: "alice", BOB: "bob"}),
        PILOTHOUSE_TELEGRAM_API_BASE=settings.telegram_api_base,
        PILOTHOUSE_TELEGRAM_POLL_SECONDS="1",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_set_webhook_registers_the_url_with_its_secret(api: Api, bot_api: FakeBotApi) -> None:
    url = "https://pilothouse.example/telegram/webhook"
    status, output = await cli(api.settings, "telegram", "set-webhook", url)
    assert status == 0, output
    [registered] = bot_api.called("setWebhook")
    assert registered.params["url"] == url
    assert registered.params["secret_token"] == SECRET
    assert TOKEN not in output


async def test_poll_feeds_the_same_handler(
    api: Api, admin: httpx.AsyncClient, bot_api: FakeBotApi
) -> None:
    job_id = await create_job(admin, stage("build", gate=GATE), stage("deploy"))
    await wait_state(admin, job_id, "needs_approval")
    sent = await gate_message(bot_api, job_id)
    pressed = bot_api.press(ALICE, button(sent, "Approve"), sent)
    await bot_api.deliver(pressed)
    status, output = await cli(api.settings, "telegram", "poll", "--once")
    assert status == 0, output
    assert TOKEN not in output
    done = await wait_state(admin, job_id, "completed")
    assert (done["gates"][0]["decided_by"], done["gates"][0]["via"]) == ("alice", "telegram")
    [answered] = bot_api.called("answerCallbackQuery")
    assert answered.params["text"] == "Approved."
    polls = bot_api.called("getUpdates")
    assert bot_api.called("deleteWebhook")
    # The batch is confirmed before the command exits: it is not delivered again.
    assert polls[-1].params["offset"] == pressed["update_id"] + 1


def test_without_a_bot_token_telegram_is_off() -> None:
    off = Settings(_env_file=None)
    assert notifying(off) is None
    assert notifying(off.model_copy(update={"telegram_bot_token": SecretStr(TOKEN)})) is None
    paths = {getattr(r, "path", "") for r in walk(create_app(off).routes)}
    assert "/telegram/webhook" not in paths
    assert "/api/v1/jobs" in paths
