"""Schemathesis fuzzing of the OpenAPI document: every operation, a fixed seed, every 5xx
answer and every schema mismatch counted, with the server's traceback line for each 5xx.

`fuzz()` is the runner; tests/test_fuzz.py calls it with few examples and fails on any
finding, this module runs it with many against a stack of its own (a Temporal dev server, the
worker and the API, in this process so the API's tracebacks can be matched to the requests).

Run: `python -m bench.fuzz [--examples 200] [--seed 1] [--db sqlite|postgresql]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER, HookContext

from settings import Settings
from stack import temporal_binary
from store import migrate
from store.engine import Database
from store.tokens import Scope, create_token
from temporal_client import connect
from tests.conftest import fresh_postgres, serve
from worker import build_worker
from workflows import attributes

ROOT = Path(__file__).resolve().parent.parent
Case = schemathesis.Case[Any]
# Server-sent events never end: a fuzzer would wait on them until its request timeout.
SKIP_PATH_REGEX = r"/events/stream$"
REVOKE_TOKEN = "DELETE /auth/tokens/{token_id}"
# The API's catch-all handler logs each unhandled error before it answers 500; uvicorn logs
# the same exception again once it escapes, and alone for one raised after the answer began.
SERVER_LOGGERS = ("pilothouse.api", "uvicorn.error")
# These checks' findings are about 5xx answers, which are counted from the answers themselves.
SERVER_ERROR_CHECKS = ("not_a_server_error",)


# uvicorn's answer to a request its HTTP parser refuses (a request line over ~64 KB): the
# API never sees it, so no document of the API can describe it.
UNPARSED = b"Invalid HTTP request received."


# CPython 3.11's `ast` raises this in the fuzzer's own code on deeply nested values
# (a CPython bug): schemathesis reports it as its own error, not as an answer of the API.
CPYTHON_AST_BUG = "AST constructor recursion depth mismatch"


def unparsed(response: Any) -> bool:
    return bool(response.status_code == 400 and response.content == UNPARSED)


# --- what the run found ---------------------------------------------------------------


@dataclass
class Finding:
    """One distinct cause: the first request that showed it and how often it was seen."""

    operation: str  # "POST /api/v1/jobs"
    status: int | None
    cause: str  # a server traceback line, an error body, or the failed check's message
    request: str
    count: int = 1

    def line(self) -> str:
        return (
            f"{self.operation}  status={self.status}  x{self.count}\n"
            f"    cause:   {self.cause}\n"
            f"    request: {self.request}"
        )


@dataclass
class FuzzReport:
    seed: int
    examples: int
    answers: Counter[str] = field(default_factory=Counter)  # operation -> answers
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)
    server_errors: Counter[str] = field(default_factory=Counter)  # operation -> 5xx answers
    causes: dict[tuple[str, str], Finding] = field(default_factory=dict)  # 5xx causes
    mismatches: dict[tuple[str, str], Finding] = field(default_factory=dict)  # check failures
    errors: list[str] = field(default_factory=list)  # the run's own errors
    phases: dict[str, str] = field(default_factory=dict)  # phase -> how it ended
    guarded: int = 0  # revokes of the run's own token, sent to an unknown id instead
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.mismatches or self.errors)

    def status_table(self) -> str:
        """Each operation's answers by status: how far the inputs got past validation."""
        lines = []
        for operation in sorted(self.answers):
            codes = sorted((s, n) for (o, s), n in self.statuses.items() if o == operation)
            lines.append(f"  {operation:50} " + " ".join(f"{s}:{n}" for s, n in codes))
        return "\n".join(lines)

    def render(self) -> str:
        out = [
            f"fuzz: seed {self.seed}, {self.examples} examples per operation and phase, "
            f"{sum(self.answers.values())} answers from {len(self.answers)} operations "
            f"in {self.elapsed:.1f} s"
        ]
        out.append("phases: " + ", ".join(f"{k} {v}" for k, v in self.phases.items()))
        out.append(f"revokes of the run's own token sent elsewhere: {self.guarded}")
        out.append(
            f"5xx answers: {sum(self.server_errors.values())} from {len(self.causes)} "
            "distinct causes"
        )
        for operation, count in sorted(self.server_errors.items()):
            out.append(f"  {count:5d} / {self.answers[operation]:5d}  {operation}")
        for finding in self.causes.values():
            out.append("  " + finding.line().replace("\n", "\n  "))
        out.append(f"schema and status mismatches: {len(self.mismatches)} distinct")
        for finding in self.mismatches.values():
            out.append("  " + finding.line().replace("\n", "\n  "))
        if self.errors:
            out.append(f"run errors: {len(self.errors)}")
            out.extend(f"  {error}" for error in self.errors)
        return "\n".join(out)


# --- matching the server's tracebacks to the requests -----------------------------------


class ServerLog(logging.Handler):
    """Holds the API's error records with a traceback, for the request that caused them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._records: list[logging.LogRecord] = []
        self._seen: list[BaseException] = []  # each exception once, though logged twice
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            with self._mutex:
                self._records.append(record)

    def take(self) -> list[BaseException]:
        """The exceptions logged since the last take, each once."""
        with self._mutex:
            records, self._records = self._records, []
        found = []
        for record in records:
            assert record.exc_info is not None
            exc = record.exc_info[1]
            if exc is not None and not any(exc is seen for seen in self._seen):
                self._seen.append(exc)
                found.append(exc)
        return found

    @contextlib.contextmanager
    def attached(self) -> Iterator[ServerLog]:
        loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)


def switched_off(response: schemathesis.Response) -> bool:
    """A 503 from a kill switch is the documented answer of a feature turned off."""
    return response.status_code == 503 and b'"KILL_SWITCH_OFF"' in response.content


def cause_of(exc: BaseException) -> tuple[str, str]:
    """(a key that tells causes apart, a line to show): the exception's type and the
    innermost frame of the project's own code, which do not change with the input."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(f"{ROOT}/") and "/.venv/" not in f.filename]
    place = "?"
    if ours or frames:
        where = (ours or frames)[-1]
        place = f"{where.filename.removeprefix(f'{ROOT}/')}:{where.lineno} in {where.name}"
    name = type(exc).__name__
    message = " ".join(str(exc).split())[:200]
    return f"{name} @ {place}", f"{name}: {message}  ({place})"


def describe(case: Case, response: schemathesis.Response) -> str:
    """The request as sent, short enough for one line per field."""
    request = response.request
    text = f"{request.method} {request.path_url}"
    generated = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if generated:
        text += f" headers={generated}"
    body = request.body
    if body:
        raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        text += f" body={raw[:400]}{'…' if len(raw) > 400 else ''}"
    return text


# --- the run --------------------------------------------------------------------------


def config(
    base_url: str, token: str, *, examples: int, seed: int, stateful: bool
) -> SchemathesisConfig:
    """Schemathesis settings, as a schemathesis.toml would give them."""
    return SchemathesisConfig.from_dict(
        {
            "seed": seed,
            "base-url": base_url,
            "headers": {"Authorization": f"Bearer {token}"},
            "workers": 1,  # one request at a time, so a logged traceback is this request's
            "continue-on-failure": True,  # every failure of an operation, not the first
            "request-timeout": 30,
            "cache": {"enabled": False},  # nothing learned carries over between runs
            "generation": {
                "max-examples": examples,
                "deterministic": True,
                "database": "none",  # no .hypothesis directory
                "mode": "all",
            },
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": stateful, "max-steps": 10},
            },
        }
    )


def fuzz(
    base_url: str, token: str, *, examples: int = 20, seed: int = 1, stateful: bool = True
) -> FuzzReport:
    """Fuzz every operation of `{base_url}/openapi.json` as an admin token. Blocking."""
    started = time.perf_counter()
    report = FuzzReport(seed=seed, examples=examples)
    auth = {"Authorization": f"Bearer {token}"}
    own_id = httpx.get(f"{base_url}/whoami", headers=auth).json()["token_id"]
    schema = schemathesis.openapi.from_url(
        f"{base_url}/openapi.json",
        config=config(base_url, token, examples=examples, seed=seed, stateful=stateful),
    ).exclude(path_regex=SKIP_PATH_REGEX)
    log = ServerLog()

    def before_call(context: HookContext, case: Case, kwargs: dict[str, Any]) -> None:
        log.take()  # whatever came before belongs to an earlier request
        # The fuzzer may find the run's own token id (GET /whoami, GET /auth/tokens), and
        # revoking it would turn every later answer into a 401.
        if case.operation.label == REVOKE_TOKEN and case.path_parameters.get("token_id") == own_id:
            case.path_parameters["token_id"] = str(uuid.uuid4())
            report.guarded += 1

    def after_call(context: HookContext, case: Case, response: schemathesis.Response) -> None:
        operation = case.operation.label
        report.answers[operation] += 1
        report.statuses[operation, response.status_code] += 1
        if response.status_code < 500 or switched_off(response):
            return
        report.server_errors[operation] += 1
        raised = log.take()
        if raised:
            key, cause = cause_of(raised[0])
        else:
            body = response.content.decode("utf-8", "replace")
            error_code = re.search(r'"error_code"\s*:\s*"([^"]*)"', body)
            key = f"{response.status_code} {error_code.group(1) if error_code else body[:80]}"
            cause = f"no traceback; body {body[:300]}"
        found = report.causes.get((operation, key))
        if found:
            found.count += 1
        else:
            report.causes[(operation, key)] = Finding(
                operation, response.status_code, cause, describe(case, response)
            )

    def mismatch(event: events.ScenarioFinished) -> None:
        recorder = event.recorder
        for case_id, checks in recorder.checks.items():
            for check in checks:
                info = check.failure_info
                if info is None or check.name in SERVER_ERROR_CHECKS:
                    continue
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction else None
                if response is None or response.status_code >= 500:
                    continue  # no answer to compare, or a 5xx: counted as its cause
                if unparsed(response):
                    continue
                case = recorder.cases[case_id].value
                failure = info.failure
                message = " ".join(failure.message.split())
                # A schema mismatch is one cause per place in the schema, whatever the value.
                where = getattr(failure, "schema_path", None)
                place = "/".join(map(str, where)) if where is not None else message[:200]
                operation = case.operation.label
                key = (operation, f"{check.name} {response.status_code} {failure.title} {place}")
                found = report.mismatches.get(key)
                if found:
                    found.count += 1
                else:
                    report.mismatches[key] = Finding(
                        operation,
                        response.status_code,
                        f"{failure.title}: {message[:300]}",
                        describe(case, response),
                    )

    GLOBAL_HOOK_DISPATCHER.register_hook_with_name(before_call, "before_call")
    GLOBAL_HOOK_DISPATCHER.register_hook_with_name(after_call, "after_call")
    try:
        with log.attached():
            for event in from_schema(schema).execute():
                if isinstance(event, events.ScenarioFinished):
                    mismatch(event)
                elif isinstance(event, events.PhaseFinished):
                    reason = event.phase.skip_reason
                    ended = f" ({reason.value})" if reason else ""
                    report.phases[event.phase.name.value] = f"{event.status.value}{ended}"
                elif isinstance(event, events.NonFatalError):
                    if CPYTHON_AST_BUG in event.info.message:
                        continue
                    report.errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
                elif isinstance(event, events.FatalError):
                    report.errors.append(f"fatal: {event.exception!r}")
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(before_call)
        GLOBAL_HOOK_DISPATCHER.unregister(after_call)
    still = httpx.get(f"{base_url}/whoami", headers=auth)
    if still.status_code != 200:
        report.errors.append(f"the run's token stopped working: GET /whoami {still.status_code}")
    report.elapsed = time.perf_counter() - started
    return report


# --- a stack of its own -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def stack(database_url: str | None) -> AsyncIterator[tuple[str, str]]:
    """A dev server, the worker and the API, like tests/conftest.py: (base URL, admin token)."""
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=attributes.ALL,
        ui=False,
        dev_server_log_level="error",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                data_dir=Path(tmp),
                database_url=database_url,
                temporal_address=env.client.service_client.config.target_host,
                task_queue=f"fuzz-{uuid.uuid4().hex[:8]}",
                log_level="warning",
                _env_file=None,
            )
            migrate.upgrade(settings.db_url)
            db = Database(settings.db_url)
            try:
                async with db.session() as session:
                    _, token = await create_token(session, "fuzz-admin", [Scope.admin])
                    await session.commit()
                client = await connect(settings)
                async with build_worker(client, db, settings), serve(settings) as base_url:
                    yield base_url, token
            finally:
                await db.dispose()
    finally:
        await env.shutdown()


async def main(db: str, examples: int, seed: int, stateful: bool) -> int:
    with contextlib.ExitStack() as exits:
        url = exits.enter_context(fresh_postgres()) if db == "postgresql" else None
        async with stack(url) as (base_url, token):
            report = await asyncio.to_thread(
                fuzz, base_url, token, examples=examples, seed=seed, stateful=stateful
            )
    print(f"database: {db}")
    print("answers by status:")
    print(report.status_table())
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=200, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--no-stateful", action="store_true", help="skip the stateful phase")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.db, args.examples, args.seed, not args.no_stateful)))
