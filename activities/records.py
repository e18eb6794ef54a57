"""Records: the only way a workflow writes to the database."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity

from store import events
from store.engine import Database


class NewEvent(BaseModel):
    resource_kind: str
    resource_id: str
    type: str
    stage: str | None = None
    status: str | None = None
    message: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)


class Records:
    """Activities bound to the worker's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn(name="records.append_event")
    async def append_event(self, new: NewEvent) -> int:
        async with self.db.session() as session:
            event = await events.append(
                session,
                new.resource_kind,
                new.resource_id,
                new.type,
                stage=new.stage,
                status=new.status,
                message=new.message,
                payload=new.payload,
            )
            await session.commit()
        assert event.id is not None
        return event.id
