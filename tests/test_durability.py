"""Durability: a worker killed mid-stage, and a Temporal server restarted under a waiting job.

These run their own dev server on a SQLite file and a worker as a real subprocess, so
both can be killed without touching the session's server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from settings import Settings
from stack import dev_server_argv
from store import migrate
from store.engine import Database
from store.models import Run
from store.tokens import Scope
from temporal_client import connect_within
from tests.conftest import free_port, make_token, serve
from tests.git_servers import make_origin
from tests.jobs_helpers import GATE, create_job, stage, wait_state
from tests.test_runs import cmd, phase, run_body, start, wait_run
from tests.test_steps import alive
from tests.test_tasks import AGENT, create, wait_task


class DevServer:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.settings = Settings(
            data_dir=data_dir, temporal_port=self.port, ui_port=free_port(), _env_file=None
        )
        self.db_file = data_dir / "temporal.db"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            dev_server_argv(self.settings, self.db_file),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = await connect_within(self.settings, 30)
        await client.service_client.check_health()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


class WorkerProcess:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
        env.update(
            PILOTHOUSE_DATA_DIR=str(self.settings.data_dir),
            PILOTHOUSE_DATABASE_URL=self.settings.db_url,
            PILOTHOUSE_TEMPORAL_ADDRESS=self.settings.temporal_target,
            PILOTHOUSE_TASK_QUEUE=self.settings.task_queue,
        )
        env.update(self.env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


@pytest.fixture
def own_stack(tmp_path: Path, db_url: str) -> Iterator[tuple[DevServer, Settings]]:
    server = DevServer(tmp_path / "temporal")
    (tmp_path / "temporal").mkdir()
    migrate.upgrade(db_url)
    settings = Settings(
        data_dir=tmp_path,
        database_url=db_url,
        temporal_address=f"127.0.0.1:{server.port}",
        task_queue=f"durable-{uuid.uuid4().hex[:8]}",
        _env_file=None,
    )
    try:
        yield server, settings
    finally:
        server.stop()


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    db = Database(settings.db_url)
    token = await make_token(db, f"admin-{uuid.uuid4().hex[:6]}", Scope.admin)
    await db.dispose()
    async with (
        serve(settings) as base,
        httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client,
    ):
        yield client


async def wait_lines(path: Path, n: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or len(path.read_text().splitlines()) < n:
        assert time.monotonic() < deadline, f"{path} never had {n} lines"
        await asyncio.sleep(0.05)


async def test_a_worker_killed_mid_stage_finishes_the_job(
    own_stack: tuple[DevServer, Settings], tmp_path: Path
) -> None:
    server, settings = own_stack
    await server.start()
    runs = tmp_path / "runs"
    worker = WorkerProcess(settings)
    worker.start()
    try:
        async with admin_client(settings) as admin:
            job_id = await create_job(
                admin,
                stage("slow", "sh", "-c", f"echo run >> {runs}; sleep 2; echo done"),
                stage("after", "echo", "after"),
            )
            await wait_lines(runs, 1)
            worker.kill()
            worker.start()
            job = await wait_state(admin, job_id, "completed", seconds=90)
            assert job["state"] == "completed"
            assert 1 <= len(runs.read_text().splitlines()) <= 2
    finally:
        worker.stop()


@pytest.mark.parametrize("stage_timeout", [10, None], ids=["short-local", "open-ended"])
async def test_a_worker_killed_mid_pipeline_runs_no_finished_stage_again(
    own_stack: tuple[DevServer, Settings], tmp_path: Path, stage_timeout: float | None
) -> None:
    """Each stage counts its runs in a file of its own. Short stages run as local
    activities, whose ends reach Temporal's history only with their workflow task: the
    replay after the kill must find them in the step runs, not run them again."""
    server, settings = own_stack
    await server.start()
    counts = tmp_path / "counts"
    counts.mkdir()
    count = f'echo ran >> {counts}/"$PILOTHOUSE_STAGE"'
    extra: dict[str, Any] = {} if stage_timeout is None else {"timeout_seconds": stage_timeout}
    names = [f"s{i}" for i in range(10)]
    stages = [stage(name, "sh", "-c", count, **extra) for name in names]
    stages[6] = stage("s6", "sh", "-c", f"{count}; sleep 3", **extra)
    worker = WorkerProcess(settings)
    worker.start()
    try:
        async with admin_client(settings) as admin:
            job_id = await create_job(admin, *stages)
            await wait_lines(counts / "s6", 1)
            worker.kill()
            worker.start()
            job = await wait_state(admin, job_id, "completed", seconds=90)
            assert job["state"] == "completed"
            runs = {name: len((counts / name).read_text().splitlines()) for name in names}
            # Only the stage that was running when the worker died may run twice.
            assert {n: c for n, c in runs.items() if n != "s6"} == {
                n: 1 for n in names if n != "s6"
            }
            assert runs["s6"] in (1, 2)
            page = (await admin.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 500})).json()
            succeeded = [
                e["stage"]
                for e in page["items"]
                if e["type"] == "step_finished" and e["status"] == "succeeded"
            ]
            assert sorted(succeeded) == names
    finally:
        worker.stop()


async def test_a_decision_after_a_server_restart_applies(
    own_stack: tuple[DevServer, Settings],
) -> None:
    server, settings = own_stack
    await server.start()
    worker = WorkerProcess(settings)
    worker.start()
    try:
        async with admin_client(settings) as admin:
            job_id = await create_job(admin, stage("review", gate=GATE), stage("ship"))
            await wait_state(admin, job_id, "needs_approval")
            server.stop()
            await server.start()
            deadline = time.monotonic() + 60
            while True:
                answer = await admin.post(f"/api/v1/jobs/{job_id}/approve")
                if answer.status_code == 200:
                    break
                assert answer.status_code == 503, answer.text
                assert time.monotonic() < deadline, answer.text
                await asyncio.sleep(0.5)
            done = await wait_state(admin, job_id, "completed", seconds=60)
            assert done["gates"][0]["state"] == "approved"
    finally:
        worker.stop()


async def run_succeeded(settings: Settings, run_id: str) -> Run:
    """The run once it succeeded, read from the database of `settings`."""
    db = Database(settings.db_url)
    try:
        return await wait_run(db, run_id, "DONE_SUCCESS", seconds=90)
    finally:
        await db.dispose()


@pytest.mark.parametrize("step_timeout", [10, None], ids=["short-local", "open-ended"])
async def test_a_worker_killed_mid_audit_builds_no_phase_again(
    own_stack: tuple[DevServer, Settings], tmp_path: Path, step_timeout: float | None
) -> None:
    """A phase's builder and auditor commands run in one activity (`step_series`): a worker
    lost while the auditor runs must not run the builder, which finished, again."""
    server, settings = own_stack
    await server.start()
    counts = tmp_path / "counts"
    counts.mkdir()
    extra: dict[str, Any] = {} if step_timeout is None else {"timeout_seconds": step_timeout}

    def counted(role: str, then: str = "true") -> dict[str, Any]:
        return cmd(f'echo ran >> {counts}/"$PILOTHOUSE_PHASE_ID".{role}; {then}') | extra

    phases = [
        phase("p1", "t1", 0, builder=counted("builder"), auditor=counted("auditor")),
        phase(
            "p2",
            "t1",
            1,
            builder=counted("builder", "echo two > two.txt"),
            auditor=counted("auditor", "sleep 3; test -f two.txt"),
        ),
    ]
    worker = WorkerProcess(settings)
    worker.start()
    try:
        async with admin_client(settings) as admin:
            await start(admin, run_body("durable-audit", ["t1"], phases))
            await wait_lines(counts / "p2.auditor", 1)
            worker.kill()
            worker.start()
            run = await run_succeeded(settings, "durable-audit")
            assert run.state == "DONE_SUCCESS", run.error
            runs = {f.name: len(f.read_text().splitlines()) for f in counts.iterdir()}
            # Only the auditor that was running when the worker died may run twice.
            assert {k: v for k, v in runs.items() if k != "p2.auditor"} == {
                "p1.builder": 1,
                "p1.auditor": 1,
                "p2.builder": 1,
            }
            assert runs["p2.auditor"] in (1, 2)
    finally:
        worker.stop()


async def test_a_worker_killed_mid_phase_finishes_the_run(
    own_stack: tuple[DevServer, Settings], tmp_path: Path
) -> None:
    server, settings = own_stack
    await server.start()
    marks = tmp_path / "marks"
    worker = WorkerProcess(settings)
    worker.start()
    try:
        async with admin_client(settings) as admin:
            body = run_body(
                "durable-1",
                ["t1"],
                [
                    phase(
                        "slow",
                        "t1",
                        0,
                        builder=cmd(f"echo run >> {marks}; sleep 2; echo ok > out.txt"),
                    ),
                    phase("after", "t1", 1, builder=cmd("echo after > after.txt")),
                ],
            )
            await start(admin, body)
            deadline = time.monotonic() + 30
            while not marks.exists():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            worker.kill()
            worker.start()
            run = await run_succeeded(settings, "durable-1")
            assert run.state == "DONE_SUCCESS"
            assert 1 <= len(marks.read_text().splitlines()) <= 2
            workspace = settings.data_dir / "workspaces" / "durable-1"
            assert json.dumps((workspace / "out.txt").read_text()) == json.dumps("ok\n")
    finally:
        worker.stop()


async def test_a_worker_killed_mid_iteration_runs_it_again_and_the_task_goes_on(
    own_stack: tuple[DevServer, Settings], tmp_path: Path
) -> None:
    server, settings = own_stack
    await server.start()
    origin = make_origin(tmp_path / "remotes")
    home = tmp_path / "home"
    pids = home / ".fake-claude" / "pids"
    worker = WorkerProcess(settings, {"PILOTHOUSE_AGENT_COMMAND": AGENT, "HOME": str(home)})
    worker.start()
    try:
        async with admin_client(settings) as admin:
            task_id = await create(admin, origin, "[slow 1] [edit app.py] survive")
            await wait_lines(pids, 1)
            worker.kill()
            worker.start()
            task = await wait_task(admin, task_id, "completed", seconds=90)
            first, *again = [int(p) for p in pids.read_text().split()]
            assert again, "the iteration ran again"
            assert not alive(first), "the orphaned agent was stopped"
            workspace = Path(task["workspace"])
            assert "survive" in (workspace / "app.py").read_text()
            answer = await admin.post(f"/api/v1/tasks/{task_id}/instruct", json={"prompt": "on"})
            assert answer.status_code == 200, answer.text
            task = await wait_task(admin, task_id, "completed", seconds=60)
            assert task["iteration"] == 2 and task["workspace"] == str(workspace)
    finally:
        worker.stop()
