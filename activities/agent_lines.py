"""Claude Code's stream-json output as events of the resource, as the lines arrive.

Each stdout line becomes one event: `agent.<type>` (system, assistant, user, result) with a
short summary and the line itself cut to fit a payload, or `agent.output` for a line that is
not JSON. The session id and the `result` line are kept for the run's outcome (agents.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from store.engine import Database
from store.writes import writing

# The agent adapter's logger: loggers name a subsystem, not a module.
log = logging.getLogger("pilothouse.agents")

LINE_TYPE = re.compile(r"[a-z][a-z0-9_]{0,39}")
EVENT_BYTES = 16 * 1024
SUMMARY_CHARS = 200
LIST_ITEMS = 50
BATCH = 200


@dataclass
class Pending:
    type: str
    status: str | None
    message: str
    payload: dict[str, Any]


class AgentStream:
    """The executor's line sink: each stdout line becomes an event, queued and written in
    order by one writer, in batches, so reading the pipes never waits on the database."""

    def __init__(self, db: Database, kind: str, resource_id: str, stage: str) -> None:
        self.db, self.kind, self.resource_id, self.stage = db, kind, resource_id, stage
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None
        self.session_id: str | None = None
        self.result: dict[str, Any] | None = None
        self.last_stderr: str | None = None

    def line(self, data: bytes, stream: str) -> None:
        text = data.decode(errors="replace").rstrip("\r")
        if not text.strip():
            return
        if stream == "stderr":
            self.last_stderr = text.strip()[:500]
            return
        self.queue.put_nowait(self.translate(text))
        if self.writer is None:
            self.writer = asyncio.create_task(self._write())

    async def drain(self) -> None:
        if self.writer is None:
            return
        await self.queue.join()
        self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.writer

    def translate(self, text: str) -> Pending:
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        kind = line.get("type") if isinstance(line, dict) else None
        if not isinstance(line, dict) or not isinstance(kind, str) or not LINE_TYPE.fullmatch(kind):
            return Pending("agent.output", None, clip(text), bounded({"line": text}))
        if isinstance(line.get("session_id"), str) and line["session_id"]:
            self.session_id = line["session_id"][:200]
        if kind == "result":
            self.result = line
        subtype = line.get("subtype")
        status = subtype[:50] if isinstance(subtype, str) else None
        return Pending(f"agent.{kind}", status, summary(line), bounded(line))

    async def _write(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                async with writing(self.db) as writes:
                    for e in batch:
                        writes.event(
                            self.kind,
                            self.resource_id,
                            e.type,
                            stage=self.stage,
                            status=e.status,
                            message=e.message,
                            payload=e.payload,
                        )
            except Exception:
                # The run goes on without them: its raw log keeps every line.
                log.warning("%s: %d agent events not written", self.resource_id, len(batch))
            finally:
                for _ in batch:
                    self.queue.task_done()


def summary(line: dict[str, Any]) -> str:
    """A short human line for an event: what the agent said or did."""
    kind = line["type"]
    if kind == "system":
        if line.get("subtype") == "init":
            return f"init: model {line.get('model')}, session {line.get('session_id')}"
        return f"system: {line.get('subtype')}"
    if kind == "result":
        cost = number(line, "total_cost_usd")
        money = f"${cost:.2f}" if cost >= 0.01 or cost == 0 else f"${cost:.4f}"
        return f"result: {line.get('subtype')}, {int(number(line, 'num_turns'))} turns, {money}"
    message = line.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    said = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            said.append(clip(str(block.get("text", ""))))
        elif block.get("type") == "tool_use":
            said.append(f"tool_use {block.get('name')}: {clip(tool_input(block.get('input')))}")
        elif block.get("type") == "tool_result":
            said.append("tool_result (error)" if block.get("is_error") else "tool_result")
        elif isinstance(block.get("type"), str):
            said.append(block["type"])
    return " | ".join(said)[: 2 * SUMMARY_CHARS] or kind


def tool_input(value: object) -> str:
    """The part of a tool's input that says what it does: a command, a path, a pattern."""
    if isinstance(value, dict):
        for key in ("command", "file_path", "path", "pattern", "url", "description"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return json.dumps(value)


def clip(text: str, chars: int = SUMMARY_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def bounded(line: dict[str, Any]) -> dict[str, Any]:
    """The line with long strings and lists cut until it fits an event's payload."""
    for chars in (4096, 1024, 256, 64):
        cut = shorten(line, chars)
        if len(json.dumps(cut)) <= EVENT_BYTES:
            return dict(cut)
    return {"type": line.get("type"), "truncated": True}


def shorten(value: Any, chars: int) -> Any:
    if isinstance(value, str) and len(value) > chars:
        return value[:chars] + f"… [{len(value) - chars} more chars]"
    if isinstance(value, list):
        kept = [shorten(v, chars) for v in value[:LIST_ITEMS]]
        more = len(value) - LIST_ITEMS
        return kept + ([f"… [{more} more items]"] if more > 0 else [])
    if isinstance(value, dict):
        return {k: shorten(v, chars) for k, v in value.items()}
    return value


def number(values: dict[str, Any], key: str) -> float:
    """A count from the agent's output; anything that is not a finite number counts as 0."""
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return value
