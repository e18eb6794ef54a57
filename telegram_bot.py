"""The link to Telegram's Bot API: python-telegram-bot's `Bot`, built from settings, and
calls that retry a failing Bot API within a bound, honouring a 429's `retry_after`.

The token is part of every Bot API URL (`<base_url><token>/<method>`), so it must never
reach a log, an event or an error: httpx logs each request's URL, python-telegram-bot logs
the base URL and puts the token in the error of a rejected `getMe`. So `guard_logs` redacts
it from every log record of the process, and `redact` from every error Pilothouse records.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import certifi
from telegram import Bot
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from settings import Settings

T = TypeVar("T")

log = logging.getLogger("pilothouse.telegram")

REDACTED = "<telegram-bot-token>"
# One Bot API call; a slower answer counts as a failure and is retried within the bound.
CALL_TIMEOUT_S = 10.0
MAX_PAUSE_S = 30.0


class GaveUp(Exception):
    """A Bot API call that did not succeed within its bound. The message is redacted."""

    def __init__(self, message: str, attempts: int, retryable: bool) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retryable = retryable


def retryable(exc: TelegramError) -> bool:
    """Flood control, timeouts, a Bot API that is down or answers 5xx. A 400 (a subclass of
    NetworkError in python-telegram-bot), 401, 403 or 404 will not change by retrying."""
    if isinstance(exc, RetryAfter):
        return True
    return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest)


def retry_after_s(exc: RetryAfter) -> float:
    # python-telegram-bot 22 warns that `retry_after` becomes a timedelta; take either.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        after: Any = exc.retry_after
    return after.total_seconds() if isinstance(after, timedelta) else float(after)


class _Redacting:
    """A log record factory that takes the token out of every record the process makes."""

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous
        self.tokens: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler will report it
            return record
        if any(token in message for token in self.tokens):
            record.msg, record.args = self.redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if any(token in text for token in self.tokens):
                # Formatters use `exc_text` when it is set, rather than format the exception.
                record.exc_text = self.redact(text)
        return record

    def redact(self, text: str) -> str:
        for token in self.tokens:
            text = text.replace(token, REDACTED)
        return text


def guard_logs(token: str) -> None:
    """Keep `token` out of every log record from now on, whoever logs it."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _Redacting):
        factory = _Redacting(factory)
        logging.setLogRecordFactory(factory)
    factory.tokens.add(token)
    # httpx logs every request's URL at INFO; those lines say nothing Pilothouse needs.
    for name in ("httpx", "httpcore"):
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)


@functools.cache
def tls() -> ssl.SSLContext:
    """httpx's default trust (certifi), made once: making it takes ~30 ms of CPU, which a
    link made per notification would spend in the worker's event loop, delaying the next
    stage that starts beside the notification (bench/telegram.py)."""
    return ssl.create_default_context(cafile=certifi.where())


class BotLink:
    """A `Bot` and its HTTP connections: one per API process, CLI command or notification."""

    def __init__(self, settings: Settings) -> None:
        assert settings.telegram_bot_token is not None
        self.token = settings.telegram_bot_token.get_secret_value()
        guard_logs(self.token)
        self.settings = settings
        verify = {"verify": tls()}
        self._requests = (
            HTTPXRequest(1, read_timeout=CALL_TIMEOUT_S, httpx_kwargs=verify),
            HTTPXRequest(8, read_timeout=CALL_TIMEOUT_S, httpx_kwargs=verify),
        )
        self.bot = Bot(
            self.token,
            base_url=settings.telegram_api_base,
            get_updates_request=self._requests[0],
            request=self._requests[1],
        )

    async def start(self) -> None:
        # Not `Bot.initialize`: its getMe puts the token in the error when it is refused,
        # and no call here needs what getMe answers.
        for request in self._requests:
            await request.initialize()

    async def stop(self) -> None:
        for request in self._requests:
            await request.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def redact(self, text: str) -> str:
        return text.replace(self.token, REDACTED)

    def describe(self, exc: BaseException) -> str:
        return self.redact(f"{type(exc).__name__}: {exc}")

    async def call(self, what: Callable[[], Awaitable[T]], deadline: float) -> T:
        """`what()`, retried while it fails in a way that may pass, until `deadline`
        (`time.monotonic()`); then `GaveUp`. Pauses double from the first, and a 429 waits
        at least its `retry_after`."""
        pause = self.settings.telegram_first_retry_seconds
        attempts = 0
        while True:
            attempts += 1
            try:
                return await what()
            except TelegramError as exc:
                if not retryable(exc):
                    raise GaveUp(self.describe(exc), attempts, retryable=False) from None
                wait = max(pause, retry_after_s(exc)) if isinstance(exc, RetryAfter) else pause
                if time.monotonic() + wait >= deadline:
                    raise GaveUp(
                        f"{self.describe(exc)} (gave up after {attempts} attempts)",
                        attempts,
                        retryable=True,
                    ) from None
                log.info("Bot API call failed (%s); retrying in %.1f s", self.describe(exc), wait)
                await asyncio.sleep(wait)
                pause = min(pause * 2, MAX_PAUSE_S)
