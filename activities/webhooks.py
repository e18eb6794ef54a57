"""Signed webhooks: the activity that POSTs a resource's outcome to its callback URL.

Each attempt has its own timeout and is recorded twice: a `WebhookDelivery` row and an event
(`webhook.delivered`, `webhook.failed_attempt`, or `webhook.gave_up` for the last). A failed
attempt is retried after the next wait in `backoff_seconds`; after the last the activity
returns `delivered=False`. A receiver's failure never fails the activity: a task must not
fail or hang because of its webhook. Neither records nor errors hold the secret, and the URL
is recorded without its userinfo, query and fragment.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, Field
from sqlmodel import col, select
from temporalio import activity

from activities.heartbeats import pulse
from settings import VERSION, Settings
from store import events
from store.engine import Database
from store.models import Event, WebhookDelivery

# The answer's status is all that counts; a receiver that streams a huge body is cut off.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_CHARS = 500
DELIVERED, FAILED_ATTEMPT, GAVE_UP = (
    "webhook.delivered",
    "webhook.failed_attempt",
    "webhook.gave_up",
)


class WebhookIn(BaseModel):
    resource_kind: str
    resource_id: str
    url: str
    event: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="`task.completed`, `task.failed`, `task.pr_created`: also a header",
    )
    body: dict[str, Any] = Field(description="Sent as compact JSON; those bytes are signed")
    trace_id: str
    backoff_seconds: list[Annotated[float, Field(ge=0, le=3600)]] = Field(
        [1.0, 5.0, 25.0],
        max_length=20,
        description="The waits between attempts: one attempt more than there are waits",
    )

    def longest_seconds(self, attempt_timeout_seconds: float) -> float:
        """The longest a delivery can take: a bound for the activity's start-to-close."""
        attempts = len(self.backoff_seconds) + 1
        return sum(self.backoff_seconds) + attempts * attempt_timeout_seconds


class WebhookOut(BaseModel):
    delivered: bool
    attempts: int = Field(description="Attempts made, counting those of earlier activity tries")
    status_code: int | None = Field(description="The last answer's status; none without one")


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: the HMAC-SHA256 of exactly the bytes sent, keyed with the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def redact(url: str) -> str:
    """The URL without userinfo, query or fragment: where it went, never its credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))[:4096]


def _problem(url: str) -> str | None:
    """Why `url` can never be delivered to, or None when it can be tried."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return f"only http and https URLs are delivered to, not {parsed.scheme or 'none'!r}"
    if not parsed.host:
        return "the URL has no host"
    return None


def _scrub(text: str, url: str) -> str:
    """An error message without the URL's credentials, however the library quoted it."""
    try:
        parts = urlsplit(url)
        secrets = [url, parts.netloc.rpartition("@")[0], parts.query, parts.fragment]
    except ValueError:
        secrets = [url]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text[:MAX_ERROR_CHARS]


def _header_safe(value: str) -> bool:
    return 0 < len(value) <= 200 and all("\x21" <= c <= "\x7e" for c in value)


class Webhooks:
    """Bound to the worker's database and settings (the secret and the attempt timeout)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn(name="webhooks.deliver")
    async def deliver(self, w: WebhookIn) -> WebhookOut:
        """POST `w.body` to `w.url` until a 2xx answer or the last attempt.

        Signed with `X-Signature-256` only when `settings.webhook_secret` is set; without a
        secret the request carries no signature header. Redirects are not followed.

        When Temporal retries this activity (its worker died), it continues from the
        attempts already recorded for this activity: none is counted twice, and one that
        was delivered is not sent again.
        """
        total = len(w.backoff_seconds) + 1
        earlier, finished = await self._earlier(w)
        if finished:
            return earlier
        done, status_code = earlier.attempts, earlier.status_code
        async with pulse():
            problem = _problem(w.url)
            if problem is not None:
                await self._record(w, done + 1, total, None, problem, 0, final=True)
                return WebhookOut(delivered=False, attempts=done + 1, status_code=None)
            payload = json.dumps(w.body, separators=(",", ":")).encode()
            headers = self._headers(w, payload)
            async with httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.settings.webhook_timeout_seconds),
            ) as client:
                for attempt in range(done + 1, total + 1):
                    if attempt > 1:
                        await asyncio.sleep(w.backoff_seconds[attempt - 2])
                    started = time.monotonic()
                    try:
                        status_code, error = await self._attempt(client, w, payload, headers)
                    except asyncio.CancelledError:
                        # The receiver may have had it, so it is on record. Not as the last:
                        # a worker shutting down cancels too, and the retry goes on from here.
                        ms = _since(started)
                        error = "canceled before an answer"
                        await asyncio.shield(
                            self._record(w, attempt, total, None, error, ms, canceled=True)
                        )
                        raise
                    ms = _since(started)
                    final = error is not None and attempt == total
                    await asyncio.shield(
                        self._record(w, attempt, total, status_code, error, ms, final=final)
                    )
                    if error is None:
                        return WebhookOut(delivered=True, attempts=attempt, status_code=status_code)
        return WebhookOut(delivered=False, attempts=total, status_code=status_code)

    def _headers(self, w: WebhookIn, payload: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Pilothouse-Webhook/{VERSION}",
            "X-Pilothouse-Event": w.event,
        }
        if _header_safe(w.trace_id):
            headers["X-Trace-ID"] = w.trace_id
        if self.settings.webhook_secret is not None:
            secret = self.settings.webhook_secret.get_secret_value()
            headers["X-Signature-256"] = signature(secret, payload)
        return headers

    async def _attempt(
        self, client: httpx.AsyncClient, w: WebhookIn, payload: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        """One POST: the answer's status, and why it failed (None when it did not)."""
        timeout = self.settings.webhook_timeout_seconds
        status_code: int | None = None
        try:
            # httpx's timeouts bound each read; this bounds the whole attempt.
            async with asyncio.timeout(timeout):
                async with client.stream("POST", w.url, content=payload, headers=headers) as r:
                    status_code = r.status_code
                    read = 0
                    async for chunk in r.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
            error = None
        except (TimeoutError, httpx.TimeoutException):
            error = f"no answer within {timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if status_code is not None and not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
            if 300 <= status_code < 400:
                error += " (redirects are not followed)"
        elif status_code is not None:
            # The status is the answer: a body cut short after it changes nothing.
            error = None
        return status_code, None if error is None else _scrub(error, w.url)

    async def _record(
        self,
        w: WebhookIn,
        attempt: int,
        total: int,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        *,
        final: bool = False,
        canceled: bool = False,
    ) -> None:
        url = redact(w.url)
        if error is None:
            kind, status, outcome = DELIVERED, "delivered", f"delivered (HTTP {status_code})"
        elif final:
            kind, status, outcome = GAVE_UP, "gave_up", f"{error}; gave up"
        elif canceled:
            kind, status, outcome = FAILED_ATTEMPT, "canceled", error
        else:
            wait = w.backoff_seconds[attempt - 1]
            kind, status, outcome = FAILED_ATTEMPT, "failed", f"{error}; retrying in {wait:g} s"
        async with self.db.session() as session:
            session.add(
                WebhookDelivery(
                    resource_kind=w.resource_kind,
                    resource_id=w.resource_id,
                    event=w.event,
                    url=url,
                    attempt=attempt,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                    delivered=error is None,
                )
            )
            await events.append(
                session,
                w.resource_kind,
                w.resource_id,
                kind,
                status=status,
                message=f"webhook {w.event} to {url}: {outcome} (attempt {attempt} of {total})",
                payload={
                    "event": w.event,
                    "url": url,
                    "attempt": attempt,
                    "attempts": total,
                    "status_code": status_code,
                    "error": error,
                    "duration_ms": duration_ms,
                    "delivery": _delivery_key(),
                },
            )
            await session.commit()

    async def _earlier(self, w: WebhookIn) -> tuple[WebhookOut, bool]:
        """What earlier tries of this activity recorded, and whether they finished it
        (delivered, or gave up): then nothing more is sent."""
        nothing = WebhookOut(delivered=False, attempts=0, status_code=None)
        if activity.info().attempt == 1:
            return nothing, False
        key = _delivery_key()
        async with self.db.session() as session:
            rows = await session.exec(
                select(Event)
                .where(
                    Event.resource_id == w.resource_id,
                    col(Event.type).in_((DELIVERED, FAILED_ATTEMPT, GAVE_UP)),
                )
                .order_by(col(Event.id).desc())
                .limit(200)
            )
            mine = [e for e in rows if e.payload.get("delivery") == key]
        if not mine:
            return nothing, False
        last = mine[0]
        out = WebhookOut(
            delivered=last.type == DELIVERED,
            attempts=int(last.payload.get("attempt", 0)),
            status_code=last.payload.get("status_code"),
        )
        return out, last.type in (DELIVERED, GAVE_UP)


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _delivery_key() -> str:
    """Names this activity across its tries (they share the run and the activity id)."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
