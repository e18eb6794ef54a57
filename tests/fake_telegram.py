"""A Telegram Bot API on loopback for the tests: it answers the methods Pilothouse calls,
records every call it gets, fails on demand, and delivers updates to `getUpdates`.

python-telegram-bot reaches it through `base_url` (`PILOTHOUSE_TELEGRAM_API_BASE`), as it
would a self-hosted Bot API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import free_port

BOT = {"id": 4242, "is_bot": True, "first_name": "Pilothouse", "username": "pilothouse_bot"}
# Parameters that are strings whatever they look like; the others are JSON-encoded.
STRINGS = {"text", "url", "secret_token", "callback_query_id", "input_field_placeholder"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str
    at: float = field(default_factory=time.monotonic)
    result: Any = None

    @property
    def buttons(self) -> list[dict[str, Any]]:
        markup = self.params.get("reply_markup") or {}
        return [b for row in markup.get("inline_keyboard", []) for b in row]


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None


class FakeBotApi:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.failures: dict[str, list[Failure]] = {}
        self.base_url = ""
        self._updates: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(500)
        self._query_ids = itertools.count(900_000)
        self.app = Starlette(routes=[Route("/bot{token}/{method}", self._call, methods=["POST"])])

    # --- what a test arranges ------------------------------------------------------------

    def fail(self, method: str, *failures: Failure) -> None:
        """The next calls of `method` answer these failures, in order, then succeed again."""
        self.failures.setdefault(method, []).extend(failures)

    async def deliver(self, update: dict[str, Any]) -> None:
        """Queue an update for `getUpdates`."""
        async with self._arrived:
            self._updates.append(update)
            self._arrived.notify_all()

    def press(
        self, user_id: int, data: str, message: Call | dict[str, Any], query_id: str | None = None
    ) -> dict[str, Any]:
        """The update of a button press on `message` (a `sendMessage` call, or the message)."""
        return {
            "update_id": next(self._update_ids),
            "callback_query": {
                "id": query_id or str(next(self._query_ids)),
                "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
                "chat_instance": "ci-1",
                "data": data,
                "message": message if isinstance(message, dict) else self.message_of(message),
            },
        }

    def reply(self, user_id: int, to: Call, text: str) -> dict[str, Any]:
        """The update of a reply by `user_id`, with `text`, to the message `to`."""
        return {
            "update_id": next(self._update_ids),
            "message": {
                "message_id": next(self._message_ids),
                "date": int(time.time()),
                "chat": {"id": to.params["chat_id"], "type": "group", "title": "ops"},
                "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
                "text": text,
                "reply_to_message": self.message_of(to),
            },
        }

    @staticmethod
    def message_of(sent: Call) -> dict[str, Any]:
        assert isinstance(sent.result, dict), sent
        return sent.result

    # --- what a test reads ----------------------------------------------------------------

    def called(self, method: str, where: Callable[[Call], bool] = lambda c: True) -> list[Call]:
        return [c for c in self.calls if c.method == method and where(c)]

    async def wait_for(
        self,
        method: str,
        where: Callable[[Call], bool] = lambda c: True,
        count: int = 1,
        seconds: float = 60,
    ) -> list[Call]:
        deadline = time.monotonic() + seconds
        while True:
            found = self.called(method, where)
            if len(found) >= count:
                return found
            got = [c.method for c in self.calls]
            assert time.monotonic() < deadline, f"no {count} {method} in {seconds} s: {got}"
            await asyncio.sleep(0.05)

    # --- the Bot API ----------------------------------------------------------------------

    async def _call(self, request: Request) -> JSONResponse:
        method = request.path_params["method"]
        params = await self._params(request)
        call = Call(method, params, request.path_params["token"])
        self.calls.append(call)
        queued = self.failures.get(method)
        if queued:
            failure = queued.pop(0)
            body: dict[str, Any] = {
                "ok": False,
                "error_code": failure.status,
                "description": failure.description,
            }
            if failure.retry_after is not None:
                body["parameters"] = {"retry_after": failure.retry_after}
            return JSONResponse(body, status_code=failure.status)
        result = await self._result(method, params)
        call.result = result
        return JSONResponse({"ok": True, "result": result})

    @staticmethod
    async def _params(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").startswith("application/json"):
            data: dict[str, Any] = await request.json()
            return data
        # python-telegram-bot posts a form, with JSON for what is not a string.
        form = urllib.parse.parse_qsl((await request.body()).decode(), keep_blank_values=True)
        params: dict[str, Any] = {}
        for key, value in form:
            if key in STRINGS:
                params[key] = value
            else:
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    params[key] = value
        return params

    async def _result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT
        if method in ("sendMessage", "editMessageText", "editMessageReplyMarkup"):
            message_id = params.get("message_id") or next(self._message_ids)
            message: dict[str, Any] = {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": {"id": params["chat_id"], "type": "group", "title": "ops"},
                "from": BOT,
                "text": params.get("text", ""),
            }
            if params.get("reply_markup", {}).get("inline_keyboard"):
                message["reply_markup"] = params["reply_markup"]
            return message
        if method == "getUpdates":
            return await self._get_updates(params)
        if method in ("answerCallbackQuery", "setWebhook", "deleteWebhook"):
            return True
        raise AssertionError(f"the fake Bot API has no method {method}")

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        # An offset confirms every update before it: they are not delivered again.
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        timeout = float(params.get("timeout") or 0)
        async with self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait_for(lambda: bool(self._updates)), timeout)
        return list(self._updates)

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls) -> AsyncIterator[FakeBotApi]:
        fake = cls()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        fake.base_url = f"http://127.0.0.1:{port}/bot"
        try:
            yield fake
        finally:
            server.should_exit = True
            await task
