"""`POST /telegram/webhook`: Telegram's updates, mounted when Telegram is on.

Not behind Pilothouse's tokens: Telegram authenticates with the secret it was given at
`setWebhook` (`pilothouse telegram set-webhook`), sent in `X-Telegram-Bot-Api-Secret-Token`.
A wrong or missing secret is a 403, and nothing is applied. The body is Telegram's Update,
parsed by python-telegram-bot (it has fields Pilothouse does not model), within the API's
body limit. Whatever the update asked, handled is 200: a refusal is told to the user in
Telegram, not to Telegram's servers, which would only retry it.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Header, Request
from pydantic import BaseModel

from api.errors import ApiError, ErrorBody
from api.route import parse, strict_router
from api.telegram_updates import TelegramUpdates
from settings import Settings

router = strict_router(tags=["telegram"], responses={403: {"model": ErrorBody}})

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class WebhookAnswer(BaseModel):
    ok: bool = True


def _check_secret(settings: Settings, given: str | None) -> None:
    expected = settings.telegram_webhook_secret
    # Without a configured secret nothing is accepted: polling needs no webhook.
    if (
        expected is None
        or given is None
        or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        raise ApiError(403, "BAD_WEBHOOK_SECRET", f"header.{SECRET_HEADER}: missing or wrong")


@router.post(
    "/telegram/webhook",
    summary="Telegram's updates: approval button presses and reasons to reject",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "A Telegram Update (https://core.telegram.org/bots/api#update)",
        }
    },
)
async def webhook(
    request: Request,
    secret: Annotated[
        str | None, Header(alias=SECRET_HEADER, description="The secret given at setWebhook")
    ] = None,
) -> WebhookAnswer:
    _check_secret(request.app.state.settings, secret)
    data = parse(await request.body())
    updates: TelegramUpdates = request.app.state.telegram
    try:
        update = updates.parse(data) if isinstance(data, dict) else None
    except (TypeError, ValueError, KeyError):
        update = None
    if update is None:
        raise ApiError(422, "VALIDATION_ERROR", "body: not a Telegram Update")
    await updates.handle(update)
    return WebhookAnswer()
