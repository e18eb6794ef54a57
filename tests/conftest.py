"""Real parts for every test: a Temporal dev server, SQLite and PostgreSQL, a served API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from settings import Settings
from stack import DEV_SERVER_TUNING, temporal_binary
from store import migrate
from store.engine import Database
from store.tokens import Scope, create_token
from temporal_client import connect
from worker import build_worker
from workflows import attributes

PG_ADMIN_URL = os.environ.get("PILOTHOUSE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


# --- exit status: the SDK can abort at interpreter exit (sdk-python #300) -------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT] = int(exitstatus)


_EXIT = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    status = config.stash.get(_EXIT, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


# --- Temporal --------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=attributes.ALL,
        ui=False,
        dev_server_log_level="error",
        dev_server_extra_args=DEV_SERVER_TUNING,
        # Five seconds (the default) is short on a busy 2-core machine.
        dev_server_startup_timeout=timedelta(seconds=30),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_target(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


# --- databases -------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    name = f"pilothouse_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pilothouse.db'}"
    else:
        with fresh_postgres() as url:
            yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path, temporal_target: str) -> Settings:
    migrate.upgrade(db_url)
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        temporal_address=temporal_target,
        task_queue=f"test-{uuid.uuid4().hex[:8]}",
        _env_file=None,
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.db_url)
    yield database
    await database.dispose()


async def make_token(db: Database, name: str, *scopes: Scope) -> str:
    async with db.session() as session:
        _, secret = await create_token(session, name, list(scopes))
        await session.commit()
    return secret


# --- the API, served for real on loopback --------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Api:
    base_url: str
    admin_token: str
    db: Database
    settings: Settings

    def client(self, token: str | None = None, header: str = "bearer") -> httpx.AsyncClient:
        headers = {}
        if token and header == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif token:
            headers["X-API-Key"] = token
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def api_process(settings: Settings, workers: int = 1) -> AsyncIterator[str]:
    """`pilothouse api` as its own process (with `workers` processes behind one port), on
    the settings' database and Temporal: its base URL once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
    env.update(
        PILOTHOUSE_DATA_DIR=str(settings.data_dir),
        PILOTHOUSE_DATABASE_URL=settings.db_url,
        PILOTHOUSE_TEMPORAL_ADDRESS=settings.temporal_target,
        PILOTHOUSE_TASK_QUEUE=settings.task_queue,
        PILOTHOUSE_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "api", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
            while True:
                assert process.poll() is None, f"the API process exited: {process.returncode}"
                assert time.monotonic() < deadline, "the API process did not answer in 60 s"
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
async def api(settings: Settings, db: Database) -> AsyncIterator[Api]:
    admin = await make_token(db, "admin", Scope.admin)
    async with serve(settings) as base_url:
        yield Api(base_url, admin, db, settings)


@pytest.fixture
async def admin(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with api.client(api.admin_token) as client:
        yield client


@pytest.fixture
def argv_log(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every argv our code gives git, recorded by a shim first on PATH."""
    shims = tmp_path_factory.mktemp("shims")
    log = shims / "argv.log"
    real = subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip()
    (shims / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    (shims / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.fixture
async def client(settings: Settings) -> Client:
    return await connect(settings)


@pytest.fixture
async def worker(settings: Settings, client: Client, db: Database) -> AsyncIterator[Worker]:
    running = build_worker(client, db, settings)
    async with running:
        yield running
