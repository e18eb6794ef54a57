"""Notify: a gate's messages in Telegram, with the buttons that decide it.

When a gate opens, a message goes to each configured chat with **Approve** and **Reject**;
reminders reply to it; when the gate closes, however it was decided (a button, the API, a
timer, auto-approval, its resource's end), the message is edited to say so and loses its
buttons. The workflow starts these activities beside its own work and never waits on them
to go on (see `workflows/gate.py`).

A Bot API that is down, answers 5xx or 429 is retried, honouring `retry_after`, until the
bound `telegram_give_up_seconds`; then a `notify.failed` event is recorded. These
activities never raise for Telegram's sake, so they never fail a workflow, and the gate
stays decidable by every other route.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.error import BadRequest
from temporalio import activity

from activities.records import Notifying
from settings import Settings
from store import events
from store.engine import Database
from store.models import TelegramMessage, utcnow
from telegram_bot import BotLink, GaveUp, tls

# Telegram's limit on a message's text.
MAX_TEXT = 4096
# A reason or an explanation may be long; the message says where to read it whole.
MAX_PART = 1000
APPROVE, REJECT = "a", "r"
RESOURCE_PATHS = {
    "job": "/api/v1/jobs/{id}",
    "run": "/runs/{id}",
    "task": "/api/v1/tasks/{id}",
    "approval": "/approval/status/{id}",
}
STATE_WORDS = {
    "approved": "✅ Approved",
    "rejected": "❌ Rejected",
    "failed": "⚠️ Failed",
    "canceled": "⏹ Canceled",
}


class GateNotice(BaseModel):
    """A gate that opened: what its message says."""

    gate_id: str
    resource_kind: str
    resource_id: str
    stage: str
    why: str | None = None
    approvals_needed: int = 1
    approvers: list[str]
    deadline: datetime | None = None
    on_timeout: str = "reject"


class GateReminderNotice(BaseModel):
    gate_id: str
    resource_kind: str
    resource_id: str
    stage: str
    approvals: list[str]
    approvals_needed: int


class GateClosedNotice(BaseModel):
    """A gate that closed, by a decision or with its resource's end."""

    gate_id: str
    resource_kind: str
    resource_id: str
    state: str
    by: str | None = None
    via: str | None = None
    reason: str | None = None
    decided_at: datetime


def callback_data(callback: str, outcome: str) -> str:
    return f"{callback}:{outcome}"


def buttons(callback: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("Approve", callback_data=callback_data(callback, APPROVE)),
                InlineKeyboardButton("Reject", callback_data=callback_data(callback, REJECT)),
            ]
        ]
    )


def clip(text: str, limit: int = MAX_PART) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def part_name(resource_kind: str) -> str:
    return "phase" if resource_kind == "run" else "stage"


def gate_text(n: GateNotice, settings: Settings) -> str:
    """What is waiting: the resource, its stage or phase, a summary, the deadline, links."""
    path = RESOURCE_PATHS.get(n.resource_kind, "/api/v1/approvals?resource_kind={kind}")
    lines = [
        f"🔔 Approval needed: {n.resource_kind} {n.resource_id}",
        f"{part_name(n.resource_kind).capitalize()}: {n.stage}",
        clip(n.why) if n.why else f"{n.stage} is done and waits for a decision.",
        f"Needs {n.approvals_needed} approval{'s' if n.approvals_needed != 1 else ''}"
        + (f" from {', '.join(n.approvers)}" if n.approvers else "")
        + ".",
        f"Deadline: {when(n.deadline)}, then {n.on_timeout}." if n.deadline else "No deadline.",
        f"Resource: {settings.api_url}{path.format(id=n.resource_id, kind=n.resource_kind)}",
        f"Temporal: {settings.ui_url}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{n.resource_id}",
    ]
    return clip("\n".join(lines), MAX_TEXT)


def outcome_text(n: GateClosedNotice) -> str:
    words = STATE_WORDS.get(n.state, n.state.capitalize())
    who = f" by {n.by} via {n.via}" if n.by and n.via and n.via != "system" else ""
    reason = f"\nReason: {clip(n.reason)}" if n.reason else ""
    return f"{words}{who} at {when(n.decided_at)}.{reason}"


def reminder_text(n: GateReminderNotice) -> str:
    return (
        f"⏰ Still waiting: {n.resource_kind} {n.resource_id}, "
        f"{part_name(n.resource_kind)} {n.stage} "
        f"({len(n.approvals)} of {n.approvals_needed} approvals)."
    )


def notifying(settings: Settings) -> Notifying | None:
    """What opening a gate answers the workflow: send messages, within this bound; or None
    when Telegram is off (no token, or no chat to send to)."""
    if not (settings.telegram_on and settings.telegram_chat_ids):
        return None
    return Notifying(within_seconds=settings.telegram_give_up_seconds)


class Notify:
    """Activities bound to the worker's database and its Telegram settings. Scheduled while
    Telegram was on, they do nothing once it is off."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        if notifying(settings) is not None:
            tls()  # made now, not in the event loop when the first gate opens

    def _deadline(self) -> float:
        # One bound for the whole activity, however many chats it writes to.
        return time.monotonic() + self.settings.telegram_give_up_seconds

    @activity.defn(name="notify.gate_opened")
    async def gate_opened(self, n: GateNotice) -> None:
        if notifying(self.settings) is None:
            return
        deadline = self._deadline()
        text = gate_text(n, self.settings)
        async with self.db.session() as session:
            rows = await self._rows(session, n, text)
            await session.commit()
        async with BotLink(self.settings) as link:
            for row in rows:
                if row.message_id is not None:
                    continue  # sent by an earlier attempt of this activity

                async def send(row: TelegramMessage = row) -> Message:
                    return await link.bot.send_message(
                        row.chat_id, row.text, reply_markup=buttons(row.callback)
                    )

                try:
                    sent = await link.call(send, deadline)
                except GaveUp as exc:
                    await self._failed(n.resource_kind, n.resource_id, n.gate_id, row, exc)
                    await self._set(row, state="failed")
                    continue
                await self._set(row, message_id=sent.message_id, state="open")

    async def _rows(self, session: AsyncSession, n: GateNotice, text: str) -> list[TelegramMessage]:
        """The gate's message row in each chat, made once: a retried activity finds them."""
        found = list(
            await session.exec(select(TelegramMessage).where(TelegramMessage.gate_id == n.gate_id))
        )
        chats = {row.chat_id for row in found}
        callback = found[0].callback if found else secrets.token_urlsafe(12)
        for chat in self.settings.telegram_chat_ids:
            if chat not in chats:
                row = TelegramMessage(
                    callback=callback,
                    gate_id=n.gate_id,
                    resource_kind=n.resource_kind,
                    resource_id=n.resource_id,
                    chat_id=chat,
                    text=text,
                )
                session.add(row)
                found.append(row)
        return found

    @activity.defn(name="notify.gate_reminder")
    async def gate_reminder(self, n: GateReminderNotice) -> None:
        if notifying(self.settings) is None:
            return
        deadline = self._deadline()
        rows = await self._open_rows(n.gate_id)
        async with BotLink(self.settings) as link:
            for row in rows:
                assert row.message_id is not None

                async def remind(row: TelegramMessage = row) -> Message:
                    return await link.bot.send_message(
                        row.chat_id,
                        reminder_text(n),
                        reply_parameters=ReplyParameters(
                            row.message_id or 0, allow_sending_without_reply=True
                        ),
                    )

                try:
                    await link.call(remind, deadline)
                except GaveUp as exc:
                    await self._failed(n.resource_kind, n.resource_id, n.gate_id, row, exc)

    @activity.defn(name="notify.gate_closed")
    async def gate_closed(self, n: GateClosedNotice) -> None:
        """Say how the gate closed, who decided and when, and take the buttons away."""
        if notifying(self.settings) is None:
            return
        deadline = self._deadline()
        rows = await self._open_rows(n.gate_id)
        async with BotLink(self.settings) as link:
            for row in rows:
                text = clip(f"{row.text}\n\n{outcome_text(n)}", MAX_TEXT)

                async def edit(row: TelegramMessage = row, text: str = text) -> None:
                    try:
                        # No reply_markup: the edited message has no buttons.
                        await link.bot.edit_message_text(
                            text, chat_id=row.chat_id, message_id=row.message_id
                        )
                    except BadRequest as exc:
                        if "not modified" not in str(exc).lower():
                            raise

                async def unbutton(row: TelegramMessage = row) -> None:
                    await link.bot.edit_message_reply_markup(
                        chat_id=row.chat_id, message_id=row.message_id, reply_markup=None
                    )

                try:
                    await link.call(edit, deadline)
                except GaveUp as exc:
                    await self._failed(n.resource_kind, n.resource_id, n.gate_id, row, exc)
                    # A text that cannot be edited (too old, deleted) may still lose its
                    # buttons; a Bot API that is down will refuse this too, at once.
                    with contextlib.suppress(GaveUp):
                        await link.call(unbutton, min(deadline, time.monotonic() + 1))
                await self._set(row, state="closed")

    async def _open_rows(self, gate_id: str) -> list[TelegramMessage]:
        async with self.db.session() as session:
            return list(
                await session.exec(
                    select(TelegramMessage)
                    .where(
                        TelegramMessage.gate_id == gate_id,
                        TelegramMessage.state == "open",
                        col(TelegramMessage.message_id).is_not(None),
                    )
                    .order_by(col(TelegramMessage.id))
                )
            )

    async def _set(self, row: TelegramMessage, **values: object) -> None:
        async with self.db.session() as session:
            await session.exec(
                sa.update(TelegramMessage)
                .where(col(TelegramMessage.id) == row.id)
                .values(updated_at=utcnow(), **values)
            )
            await session.commit()

    async def _failed(
        self, kind: str, resource_id: str, gate_id: str, row: TelegramMessage, exc: GaveUp
    ) -> None:
        activity.logger.warning("Telegram notification of gate %s failed: %s", gate_id, exc)
        async with self.db.session() as session:
            await events.append(
                session,
                kind,
                resource_id,
                "notify.failed",
                message=f"Telegram: chat {row.chat_id}: {exc}",
                payload={
                    "gate_id": gate_id,
                    "chat_id": row.chat_id,
                    "error": str(exc),
                    "attempts": exc.attempts,
                },
            )
            await session.commit()
