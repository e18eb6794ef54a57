"""Live events: one watcher per API process, fanned out to every subscriber, and the SSE
stream built on it (subscribe, then replay, then live; `id:` on every event)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from settings import LIMITS
from store import events
from store.engine import Database, is_sqlite
from store.models import Event

log = logging.getLogger("pilothouse.streams")

POLL_S = 0.05
QUEUE_SIZE = 1000
REPLAY_BATCH = 500


class Subscription:
    """A subscriber's queue. When it overflows, the reader catches up from the database."""

    def __init__(self, resource_id: str) -> None:
        self.resource_id = resource_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self.lagged = False

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True


class EventHub:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._cursors: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Queue[str] = asyncio.Queue()
        self._stopping = asyncio.Event()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self) -> None:
        watcher = self._poll_sqlite if is_sqlite(self.db.url) else self._listen_postgres
        self._task = asyncio.create_task(watcher())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task:
            if is_sqlite(self.db.url):
                # Let the poller leave its session cleanly rather than cut it mid-query.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._task), 5)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def subscribe(self, resource_id: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(resource_id)
        if resource_id not in self._cursors:
            async with self.db.session() as session:
                self._cursors.setdefault(resource_id, await events.last_id(session, resource_id))
        self._subscribers[resource_id].add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers[resource_id].discard(subscription)
            if not self._subscribers[resource_id]:
                del self._subscribers[resource_id]
                self._cursors.pop(resource_id, None)

    def _dispatch(self, event: Event) -> None:
        assert event.id is not None
        cursor = self._cursors.get(event.resource_id)
        if cursor is None or event.id <= cursor:
            return
        self._cursors[event.resource_id] = event.id
        for subscription in self._subscribers.get(event.resource_id, ()):
            subscription.offer(event)

    async def _poll_sqlite(self) -> None:
        # SQLite commits in id order (one writer at a time), so one global cursor is exact.
        cursor: int | None = None
        failing = False
        while not self._stopping.is_set():
            try:
                new: list[Event] = []
                if not self._subscribers:
                    # Nobody listens: no query. Whoever subscribes next replays from the
                    # database, so the cursor may start afresh then.
                    cursor = None
                else:
                    if cursor is None:
                        # Each subscribed resource's cursor was read before its reader
                        # replayed, so starting at the lowest one misses nothing.
                        cursor = min(self._cursors.values(), default=0)
                    async with self.db.session() as session:
                        new = list(await events.since_global(session, cursor, REPLAY_BATCH))
                for event in new:
                    assert event.id is not None
                    cursor = event.id
                    self._dispatch(event)
                failing = False
                if len(new) == REPLAY_BATCH:
                    continue
            except Exception as exc:
                if not failing:
                    log.warning("event watcher cannot read the event log: %s", exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), POLL_S)

    async def _fetch(self, resource_id: str) -> None:
        if resource_id not in self._subscribers:
            return
        cursor = self._cursors.get(resource_id, 0)
        async with self.db.session() as session:
            new = await events.after(session, resource_id, cursor, REPLAY_BATCH)
        for event in new:
            self._dispatch(event)
        if len(new) == REPLAY_BATCH:
            self._wake.put_nowait(resource_id)

    async def _listen_postgres(self) -> None:
        url = make_url(self.db.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {events.CHANNEL}")
                    # Catch up on whatever was written while (re)connecting.
                    for resource_id in list(self._subscribers):
                        await self._fetch(resource_id)
                    fetcher = asyncio.create_task(self._fetch_woken())
                    try:
                        async for note in conn.notifies():
                            self._wake.put_nowait(note.payload)
                    finally:
                        fetcher.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(1)

    async def _fetch_woken(self) -> None:
        while True:
            resource_id = await self._wake.get()
            try:
                await self._fetch(resource_id)
            except Exception:
                log.exception("could not read events of %s", resource_id)


def resume_from(last_event_id: str | None, after: int) -> int:
    """Where a stream starts: after `Last-Event-ID` when it is an event id, else `after`."""
    if last_event_id is not None and last_event_id.strip().isdigit():
        value = int(last_event_id)
        if value <= LIMITS.max_int:
            return value
    return after


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "ts": event.created_at.isoformat().replace("+00:00", "Z"),
        "type": event.type,
        "stage": event.stage,
        "status": event.status,
        "message": event.message,
        "payload": event.payload,
        "resource_kind": event.resource_kind,
        "resource_id": event.resource_id,
    }


# The coding-agent system's stream names five kinds of event; the log's types map onto them.
AGENT_STREAM_KINDS = ("system", "git", "cli", "stream", "result")


def agent_stream_json(event: Event) -> dict[str, Any]:
    """An event as the coding-agent stream sends it: `{type, event, data, ts}`, where an
    agent's own stream-json line is `data` as it came."""
    head = event.type.split(".", 1)[0]
    if event.type == "agent.result":
        kind = "result"
    elif head == "agent":
        kind = "stream"
    elif event.type in ("stage_started", "step_finished"):
        kind = "cli"
    else:
        kind = head if head in AGENT_STREAM_KINDS else "system"
    data = event.payload if head == "agent" else {"message": event.message, **event.payload}
    return {
        "type": kind,
        "event": event.type,
        "data": data,
        "ts": event.created_at.isoformat().replace("+00:00", "Z"),
    }


def frame(data: dict[str, Any], *, event: str | None = None, id: int | None = None) -> str:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, default=str)}")
    return "\n".join(lines) + "\n\n"


async def sse(
    hub: EventHub,
    resource_id: str,
    after_id: int,
    connected: dict[str, Any],
    ended: Callable[[], Awaitable[dict[str, Any] | None]],
    keepalive_s: float,
    max_s: float,
    shape: Callable[[Event], dict[str, Any]] = event_json,
    settles: Callable[[Event], bool] = lambda _: False,
) -> AsyncIterator[str]:
    """Subscribe first, then replay from the database, then follow live events.

    `ended` returns the resource's final status once it has ended, else None. An event
    that `settles` the resource without ending it (a task's iteration completed) also
    closes the stream with `done`, when it is the latest: live, or last in the replay.
    """
    async with hub.subscribe(resource_id) as subscription:
        yield frame(connected, event="connected")
        last = after_id
        caught_up = False
        started = time.monotonic()
        # Asked before the replay, so whatever ended the resource is in the replay; asked
        # after, a resource ending in between would get `done` without its last events.
        final = await ended()
        while True:
            if not caught_up or subscription.lagged:
                subscription.lagged = False
                async with hub.db.session() as session:
                    batch = await events.after(session, resource_id, last, REPLAY_BATCH)
                for event in batch:
                    assert event.id is not None
                    last, started = event.id, time.monotonic()
                    yield frame(shape(event), id=event.id)
                    if event.final:
                        yield frame({"status": event.status}, event="done")
                        return
                if len(batch) == REPLAY_BATCH:
                    continue
                if batch and settles(batch[-1]):
                    yield frame({"status": batch[-1].status}, event="done")
                    return
                if not caught_up:
                    caught_up = True
                    if final is not None:
                        yield frame(final, event="done")
                        return
            left = max_s - (time.monotonic() - started)
            if left <= 0:
                yield frame({"after_seconds": max_s}, event="timeout")
                return
            try:
                event = await asyncio.wait_for(subscription.queue.get(), min(keepalive_s, left))
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            assert event.id is not None
            if event.id <= last:
                continue
            last, started = event.id, time.monotonic()
            yield frame(shape(event), id=event.id)
            if event.final or settles(event):
                yield frame({"status": event.status}, event="done")
                return
