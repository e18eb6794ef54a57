"""Telegram updates to decisions: the one handler that the webhook and `pilothouse telegram
poll` feed.

A press of **Approve** or **Reject** on a gate's message (`activities/notify.py`) becomes a
decision through `api/decisions.decide`, the path the API takes, under the approver
identity `PILOTHOUSE_TELEGRAM_APPROVERS` maps the Telegram user to, with `via="telegram"`.
The Update id comes from the callback query id, so Telegram's retries of a press apply
once. A Reject that needs a reason asks for one with a ForceReply; the reply decides.
Anything else is answered with why nothing was decided; the message itself is edited by
the workflow, whatever decided the gate.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from telegram import CallbackQuery, ForceReply, Message, ReplyParameters, Update
from temporalio.client import Client

from activities.notify import APPROVE, REJECT, clip, part_name
from api import decisions
from api.errors import ApiError
from settings import LIMITS, Settings
from store.engine import Database
from store.models import Decision, GateRow, TelegramMessage, TelegramPrompt
from telegram_bot import BotLink, GaveUp
from temporal_client import connect_within
from workflows.gate import DecisionOut, Outcome

log = logging.getLogger("pilothouse.telegram")

# Telegram waits for the webhook's answer: a Bot API call made while handling an update
# gets a short bound, not the notifications' long one.
ANSWER_WITHIN_S = 5.0
# Telegram's limit on a callback query's answer.
MAX_ANSWER = 200
NOT_AN_APPROVER = "You are not a Pilothouse approver: nothing was decided."
UPDATES = ["message", "callback_query"]


def update_id(key: str) -> str:
    """The decision's Update id, which makes a retried press or reply apply once."""
    return f"tg-{key}"


class TelegramUpdates:
    """Decides gates from Telegram's updates."""

    def __init__(
        self, settings: Settings, db: Database, temporal: Callable[[], Client], link: BotLink
    ) -> None:
        self.settings = settings
        self.db = db
        self.temporal = temporal
        self.link = link

    def parse(self, data: dict[str, Any]) -> Update:
        return Update.de_json(data, self.link.bot)

    async def handle(self, update: Update) -> None:
        if update.callback_query is not None:
            await self._press(update.callback_query)
        elif update.message is not None and update.message.reply_to_message is not None:
            await self._reply(update.message)
        # Other updates (messages to the bot, edits, joins) ask nothing of Pilothouse.

    # --- a button press --------------------------------------------------------------------

    async def _press(self, query: CallbackQuery) -> None:
        callback, _, outcome = (query.data or "").rpartition(":")
        if not callback or outcome not in (APPROVE, REJECT):
            await self._answer(query, "This button is not one of Pilothouse's.")
            return
        by = self.settings.telegram_approvers.get(query.from_user.id)
        if by is None:
            await self._answer(query, NOT_AN_APPROVER, alert=True)
            return
        async with self.db.session() as session:
            gate = await self._gate(session, callback)
            if gate is None:
                await self._answer(query, "This gate is unknown to Pilothouse.", alert=True)
                return
            if outcome == REJECT and gate.config.get("reason_required_on_reject", True):
                await self._ask_reason(session, query, gate)
                return
            said, refused = await self._decide(
                session, gate, "approve" if outcome == APPROVE else "reject", by, query.id
            )
        await self._answer(query, said, alert=refused)

    async def _gate(self, session: AsyncSession, callback: str) -> GateRow | None:
        row = (
            await session.exec(
                select(TelegramMessage).where(TelegramMessage.callback == callback).limit(1)
            )
        ).first()
        return None if row is None else await session.get(GateRow, row.gate_id)

    async def _decide(
        self,
        session: AsyncSession,
        gate: GateRow,
        outcome: Outcome,
        by: str,
        key: str,
        reason: str | None = None,
    ) -> tuple[str, bool]:
        """Decide the gate; what to tell the user, and whether it was a refusal. `gate` was
        read before this looks for the decision: both are written in one transaction, so a
        gate seen decided has its decision found."""
        earlier = await session.get(Decision, f"{gate.resource_id}/{update_id(key)}")
        if earlier is not None:
            # Telegram delivered this press or reply again: it is already applied.
            return self._said(earlier.outcome, gate.state, len(gate.approvals), gate), False
        if gate.state != "open":
            return f"Nothing was decided: gate {gate.id} is already {gate.state}.", True
        try:
            result: DecisionOut = await decisions.decide(
                self.temporal(),
                session,
                gate,
                outcome,
                by,
                via="telegram",
                reason=reason,
                idempotency_key=update_id(key),
            )
        except ApiError as exc:
            return f"Nothing was decided: {exc.detail}", True
        return self._said(result.outcome, result.gate_state, len(result.approvals), gate), False

    @staticmethod
    def _said(outcome: str, gate_state: str, approvals: int, gate: GateRow) -> str:
        if outcome == "approve" and gate_state == "open":
            return f"Approval recorded: {approvals} of {gate.approvals_needed}."
        return "Approved." if outcome == "approve" else "Rejected."

    async def _ask_reason(self, session: AsyncSession, query: CallbackQuery, gate: GateRow) -> None:
        if gate.state != "open":
            await self._answer(query, f"Nothing was decided: gate is {gate.state}.", alert=True)
            return
        if await session.get(TelegramPrompt, query.id) is not None:
            await self._answer(query, "Reply to the question with your reason.")
            return
        chat = query.message.chat.id if query.message is not None else None
        if chat is None:
            await self._answer(query, "Nothing was decided: the message is gone.", alert=True)
            return
        prompt = TelegramPrompt(
            id=query.id, gate_id=gate.id, chat_id=chat, user_id=query.from_user.id
        )
        session.add(prompt)
        await session.commit()
        assert query.message is not None
        gate_message = query.message.message_id
        try:
            asked = await self.link.call(
                lambda: self.link.bot.send_message(
                    chat,
                    f"Why reject {part_name(gate.resource_kind)} {gate.stage} of "
                    f"{gate.resource_kind} {gate.resource_id}? Reply to this message "
                    "with the reason.",
                    reply_markup=ForceReply(input_field_placeholder="The reason to reject"),
                    reply_parameters=ReplyParameters(
                        gate_message, allow_sending_without_reply=True
                    ),
                ),
                time.monotonic() + ANSWER_WITHIN_S,
            )
        except GaveUp as exc:
            log.warning("could not ask for a reason to reject gate %s: %s", gate.id, exc)
            await session.delete(prompt)
            await session.commit()
            await self._answer(query, "Could not ask for a reason: reject it in the API.", True)
            return
        prompt.message_id = asked.message_id
        session.add(prompt)
        await session.commit()
        await self._answer(query, "Reply to the question with your reason.")

    async def _answer(self, query: CallbackQuery, text: str, alert: bool = False) -> None:
        try:
            await self.link.call(
                lambda: self.link.bot.answer_callback_query(
                    query.id, text=clip(text, MAX_ANSWER), show_alert=alert
                ),
                time.monotonic() + ANSWER_WITHIN_S,
            )
        except GaveUp as exc:
            # The decision stands either way; the button's spinner stops by itself.
            log.warning("could not answer a Telegram button press: %s", exc)

    # --- a reply with a reason ---------------------------------------------------------------

    async def _reply(self, message: Message) -> None:
        asked = message.reply_to_message
        assert asked is not None
        async with self.db.session() as session:
            prompt = (
                await session.exec(
                    select(TelegramPrompt).where(
                        TelegramPrompt.chat_id == message.chat.id,
                        TelegramPrompt.message_id == asked.message_id,
                    )
                )
            ).first()
            if prompt is None:
                return  # a reply to something else
            user = message.from_user
            by = self.settings.telegram_approvers.get(user.id) if user is not None else None
            reason = (message.text or "").strip()
            gate = await session.get(GateRow, prompt.gate_id)
            if by is None:
                said = NOT_AN_APPROVER
            elif not reason:
                said = "Nothing was decided: reply with the reason as text."
            elif len(reason) > LIMITS.max_text_chars:
                said = f"Nothing was decided: at most {LIMITS.max_text_chars} characters, please."
            elif gate is None:
                said = "Nothing was decided: this gate is unknown to Pilothouse."
            else:
                key = f"{message.chat.id}-{message.message_id}"
                said, refused = await self._decide(session, gate, "reject", by, key, reason)
                if not refused:
                    return  # the gate's message, edited, says so
        await self._tell(message, said)

    async def _tell(self, message: Message, text: str) -> None:
        try:
            await self.link.call(
                lambda: self.link.bot.send_message(
                    message.chat.id,
                    text,
                    reply_parameters=ReplyParameters(
                        message.message_id, allow_sending_without_reply=True
                    ),
                ),
                time.monotonic() + ANSWER_WITHIN_S,
            )
        except GaveUp as exc:
            log.warning("could not answer a Telegram reply: %s", exc)


async def poll(settings: Settings, *, once: bool = False) -> None:
    """Long-poll `getUpdates` and feed the handler, for a Pilothouse without a public URL.
    `once` handles one batch (or one empty poll), confirms it, and returns."""
    db = Database(settings.db_url)
    temporal = await connect_within(settings, 30)
    try:
        async with BotLink(settings) as link:
            updates = TelegramUpdates(settings, db, lambda: temporal, link)
            bound = settings.telegram_give_up_seconds
            # getUpdates is refused while a webhook is set: polling replaces it.
            await link.call(link.bot.delete_webhook, time.monotonic() + bound)
            offset: int | None = None
            while True:
                try:
                    batch = await link.call(
                        functools.partial(
                            link.bot.get_updates,
                            offset=offset,
                            timeout=settings.telegram_poll_seconds,
                            allowed_updates=UPDATES,
                        ),
                        time.monotonic() + bound,
                    )
                except GaveUp as exc:
                    # A poller outlives a Bot API outage; a refused token or a second
                    # poller (409) will not pass by waiting.
                    if once or not exc.retryable:
                        raise
                    log.warning("Telegram did not answer getUpdates: %s; polling again", exc)
                    continue
                for update in batch:
                    try:
                        await updates.handle(update)
                    except Exception:
                        # One update that fails must not stop the others; it is not retried.
                        log.exception("Telegram update %s failed", update.update_id)
                    offset = update.update_id + 1
                if once:
                    if offset is not None:
                        # getUpdates with the next offset is what confirms a batch.
                        await link.call(
                            functools.partial(link.bot.get_updates, offset=offset, timeout=0),
                            time.monotonic() + bound,
                        )
                    return
    finally:
        await db.dispose()
