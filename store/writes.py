"""A transaction's row updates and events, held and written together.

On the way to a step, an activity records what the workflow carried to it (decisions,
deferred transitions) and the step's own start: several updates of the same rows and an
event each. Run one statement at a time, those cost more than the step itself. `Writes`
merges the updates of one row into one UPDATE (later values win, as they would have) and
adds the events in one INSERT, in the order they came, when it is flushed. On SQLite the
UPDATEs and the INSERT go to the driver as one batch (`sqlite_writes`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Unpack

from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from store import events, resources, sqlite_writes
from store.engine import Database
from store.events import EventFields
from store.models import Event

RowKey = tuple[type[SQLModel], tuple[tuple[str, Any], ...]]


class Writes:
    """Held writes for `session`'s transaction. A statement of another kind whose effect
    depends on them (a gate closed as its resource ends) comes after a `flush`."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._rows: dict[RowKey, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []

    def update(self, table: type[SQLModel], where: dict[str, Any], values: dict[str, Any]) -> None:
        if values:
            self._rows.setdefault((table, tuple(where.items())), {}).update(values)

    def set_fields(self, kind: str, resource_id: str, **values: Any) -> None:
        for change in resources.field_changes(kind, resource_id, values):
            self.update(*change)

    def set_parts(self, kind: str, resource_id: str, parts: dict[str, dict[str, Any]]) -> None:
        for change in resources.part_changes(kind, resource_id, parts):
            self.update(*change)

    def event(
        self, resource_kind: str, resource_id: str, type: str, **fields: Unpack[EventFields]
    ) -> None:
        """An event, as `events.append` takes it."""
        self._events.append(events.row(resource_kind, resource_id, type, **fields))

    async def flush(self) -> None:
        rows, self._rows = self._rows, {}
        held, self._events = self._events, []
        direct = await sqlite_writes.direct_writes(self.session) if rows or held else None
        for (table, where), values in rows.items():
            if direct is None:
                await resources.update(self.session, table, dict(where), values)
            else:
                direct.update(table, dict(where), values)
        if direct is None:
            await events.append_many(self.session, held)
        else:
            # What `events.append_many` does on SQLite, in the batch.
            direct.insert_many(Event, events.stamped(held))
            await direct.run()


@asynccontextmanager
async def writing(db: Database) -> AsyncIterator[Writes]:
    """A transaction of its own (`written`)."""
    async with db.session() as session, written(session) as writes:
        yield writes


@asynccontextmanager
async def written(session: AsyncSession) -> AsyncIterator[Writes]:
    """Held writes for `session`'s transaction, flushed, then committed, when the block
    ends without an error; with one, nothing is written."""
    writes = Writes(session)
    yield writes
    await writes.flush()
    await session.commit()
