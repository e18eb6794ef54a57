"""Benchmark of scheduled tasks: a firing's scheduled time → the agent's process started,
p50 over N firings, with the API and the worker as their own processes on one dev server;
beside it, in the same run, a bare Temporal schedule's firing → its one activity started
(`@every 2s` offset by 1 s, so the two do not fire together).

A task definition (no repository: a scratch workspace) is scheduled `@every 2s`; each
firing's scheduled time is the schedule's own record of it (`recent_actions`), and
"started" is when the fake agent (`tests/fake_claude.py`) appends its pid to its pid file
(its own first act), read as the file's modification time.

Run: `python -m bench.schedules [--database-url URL] [--rounds 20] [--every 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
)
from temporalio.worker import Worker

from bench.jobs import pct, peak_kib, processes, wait_ready
from bench.raw import RawOne, run_true
from bench.tasks import agent_started
from temporal_client import connect

FAKE = Path(__file__).resolve().parent.parent / "tests" / "fake_claude.py"
AGENT = (
    f"{sys.executable} {FAKE} -p {{prompt}} --output-format stream-json --verbose "
    "--max-turns {max_turns} --model {model} --permission-mode {mode}"
)


async def firings(
    http: httpx.AsyncClient, client: Client, pids: Path, rounds: int, every: int
) -> list[float]:
    answer = await http.post(
        "/api/v1/tasks",
        json={"name": "bench", "prompt_template": "go", "schedule_cron": f"@every {every}s"},
    )
    answer.raise_for_status()
    handle = client.get_schedule_handle(answer.json()["schedule_id"])
    delays: list[float] = []
    seen = 0
    while len(delays) < rounds + 1:
        started = await agent_started(pids, seen)
        seen += 1
        described = await handle.describe()
        # The firing that started this agent: the latest the schedule has made.
        scheduled = max(a.scheduled_at for a in described.info.recent_actions)
        delays.append((started - scheduled.timestamp()) * 1000)
    await http.delete(f"/api/v1/tasks/{answer.json()['id']}")
    return delays[1:]  # the first firing warms the worker


async def bare_firings(client: Client, rounds: int, every: int) -> list[float]:
    schedule_id = f"raw-schedule-{uuid.uuid4()}"
    handle = await client.create_schedule(
        schedule_id,
        Schedule(
            action=ScheduleActionStartWorkflow(RawOne.run, id=schedule_id, task_queue="bench-raw"),
            spec=ScheduleSpec(
                intervals=[
                    ScheduleIntervalSpec(
                        every=timedelta(seconds=every), offset=timedelta(seconds=every / 2)
                    )
                ]
            ),
        ),
    )
    delays: dict[str, float] = {}
    while len(delays) < rounds + 1:
        for action in (await handle.describe()).info.recent_actions:
            run_id = getattr(action.action, "workflow_id", None)
            if run_id is None or run_id in delays:
                continue
            started: float = await client.get_workflow_handle(run_id).result()
            delays[run_id] = (started - action.scheduled_at.timestamp()) * 1000
        await asyncio.sleep(0.2)
    await handle.delete()
    return list(delays.values())[1:]  # the first firing warms the worker


async def main(database_url: str | None, rounds: int, every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        pids = home / ".fake-claude" / "pids"
        env = {"PILOTHOUSE_AGENT_COMMAND": AGENT, "HOME": str(home)}
        async with processes(database_url, env) as (_, settings, token, api, worker):
            http = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{settings.api_port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            client = await connect(settings)
            try:
                await wait_ready(http)
                print(f"database: {'PostgreSQL' if database_url else 'SQLite'}; every {every} s")
                async with Worker(
                    client, task_queue="bench-raw", workflows=[RawOne], activities=[run_true]
                ):
                    delays, bare = await asyncio.gather(
                        firings(http, client, pids, rounds, every),
                        bare_firings(client, rounds, every),
                    )
                print(
                    f"scheduled time → agent started  p50 {statistics.median(delays):6.1f} ms"
                    f"  p95 {pct(delays, 0.95):6.1f} ms  max {max(delays):6.1f} ms"
                    f"  over {len(delays)} firings"
                    f"   bare firing → activity started p50 {statistics.median(bare):6.1f} ms"
                    f"  (over {len(bare)})"
                )
                print(
                    f"peak memory  api {peak_kib(api.pid) / 1024:6.1f} MiB"
                    f"   worker {peak_kib(worker.pid) / 1024:6.1f} MiB"
                )
            finally:
                await http.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--every", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.rounds, args.every))
