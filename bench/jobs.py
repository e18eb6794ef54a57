"""Benchmarks of the gate, the step executor and the event log, each beside raw Temporal in
the same run, on one dev server, with the API and the worker as their own processes.

(a) decision latency: POST approve → next stage started, beside a raw `execute_update`,
    each sent once its workflow has waited a while (`IDLE_S`)
(b) 500 jobs through POST /api/v1/jobs, beside 500 raw `start_workflow` calls
(c) one job of 40 sequential stages that each run `true`, beside a bare workflow of 40
    activities that each run `true`: with the stages declared short (one series in a local
    activity) and without a timeout (one series in an ordinary activity)
(d) 100 SSE subscribers on one job: event written → event received

Run: `make bench` or `python -m bench.jobs [--database-url URL]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.raw import RawGate, RawResult, RawSteps, run_true
from settings import Settings
from stack import DEV_SERVER_TUNING, temporal_binary
from store import migrate
from store.engine import Database
from store.tokens import Scope, create_token
from temporal_client import connect
from tests.conftest import free_port
from tests.sse_client import frames
from workflows import attributes

# A decision or an executor's result reaches a workflow that has waited for it. Both sides
# of a latency figure send theirs this long after they saw their workflow waiting (ours
# by the API, raw by a query): an Update sent at once after that query meets a server, a
# worker and CPUs still warm from it, and here takes ~8 ms where the same sent 0.2 s later
# takes ~12 (the bench prints both).
IDLE_S = 0.2


def beside_warm(ours_p50: float, warm_p50: float) -> str:
    """The line that shows the raw Update sent right after its query."""
    return (
        f"    each sent {IDLE_S:g} s after its workflow was seen waiting; raw sent right"
        f" after its query p50 {warm_p50:5.1f} ms, ratio to that {ours_p50 / warm_p50:4.2f}x"
    )


async def raw_result_ms(client: Client, idle: float) -> float:
    """A raw Update, sent `idle` s after a query found its workflow waiting, to the one
    activity it starts begun (`bench.raw.RawResult`), in ms. Needs a worker on `bench-raw`."""
    handle = await client.start_workflow(
        RawResult.run, id=f"raw-result-{uuid.uuid4()}", task_queue="bench-raw"
    )
    await handle.query(RawResult.waiting)
    await asyncio.sleep(idle)
    before = time.time()
    await handle.execute_update(RawResult.post, "approve")
    activity_started: float = await handle.result()
    return (activity_started - before) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and _stat(int(entry.name))[1] == str(pid):
                found.append(int(entry.name))
        except OSError:  # gone while we looked
            continue
    return found


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """User and system CPU of a process and its children (an API's --workers), from /proc."""
    fields = _stat(pid)
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not with_children:
        return own
    return own + sum(cpu_seconds(child) for child in children(pid))


def dev_server_pid() -> int:
    """The dev server WorkflowEnvironment.start_local spawned as this process's child."""
    for child in children(os.getpid()):
        if b"start-dev" in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    raise RuntimeError("no dev server child process")


class Bench:
    def __init__(self, env: WorkflowEnvironment, settings: Settings, token: str) -> None:
        self.env = env
        self.settings = settings
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=200),
        )
        self.db = Database(settings.db_url)

    async def job(self, stages: list[dict[str, Any]]) -> str:
        answer = await self.http.post("/api/v1/jobs", json={"stages": stages})
        answer.raise_for_status()
        return str(answer.json()["id"])

    async def wait_state(self, job_id: str, state: str) -> dict[str, Any]:
        # Figures come from the event log's timestamps, so a slow poll costs no accuracy,
        # and a fast one would steal the CPU being measured.
        while True:
            job: dict[str, Any] = (await self.http.get(f"/api/v1/jobs/{job_id}")).json()
            if job["state"] == state and (state != "needs_approval" or job["open_gate"]):
                return job
            await asyncio.sleep(0.05)

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        page = await self.http.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 500})
        items: list[dict[str, Any]] = page.json()["items"]
        return items


def describe(database_url: str | None, tuned: bool) -> str:
    server = "tuned (transfer queue read 1000/s)" if tuned else "Temporal's defaults"
    database = "PostgreSQL" if database_url else "SQLite"
    return f"database: {database}; dev server: {server}; 2 cores"


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def decision_latency(bench: Bench, client: Client, rounds: int) -> dict[str, float]:
    """Rounds alternate ours and raw, so both see the same machine from moment to moment.
    Each side decides `IDLE_S` after it saw its workflow waiting; raw also right after its
    query (`raw_warm`)."""

    async def ours_one() -> float:
        job_id = await bench.job(
            [
                {"name": "a", "run": ["true"], "gate": {"required": True}},
                {"name": "b", "run": ["true"]},
            ]
        )
        await bench.wait_state(job_id, "needs_approval")
        await asyncio.sleep(IDLE_S)
        sent = datetime.now(UTC)
        (await bench.http.post(f"/api/v1/jobs/{job_id}/approve")).raise_for_status()
        await bench.wait_state(job_id, "completed")
        started = [
            e
            for e in await bench.events(job_id)
            if e["type"] == "stage_started" and e["stage"] == "b"
        ]
        return (ts(started[0]["ts"]) - sent).total_seconds() * 1000

    async def raw_one(idle: float) -> float:
        handle = await client.start_workflow(
            RawGate.run, id=f"raw-{uuid.uuid4()}", task_queue="bench-raw"
        )
        # Like the job's gate, the workflow is already running and waiting: the query
        # returns once its first task is done, so only the Update is timed.
        await handle.query(RawGate.waiting)
        await asyncio.sleep(idle)
        start = time.perf_counter()
        await handle.execute_update(RawGate.decide, "approve")
        return (time.perf_counter() - start) * 1000

    ours: list[float] = []
    raw: list[float] = []
    warm: list[float] = []
    async with Worker(client, task_queue="bench-raw", workflows=[RawGate]):
        for _ in range(rounds):
            ours.append(await ours_one())
            raw.append(await raw_one(IDLE_S))
            warm.append(await raw_one(0))
    return {
        "ours_p50": statistics.median(ours),
        "ours_p95": pct(ours, 0.95),
        "raw_p50": statistics.median(raw),
        "raw_p95": pct(raw, 0.95),
        "raw_warm_p50": statistics.median(warm),
    }


async def start_throughput(
    idle_api: httpx.AsyncClient, api_pid: int, client: Client, n: int, concurrency: int
) -> dict[str, float]:
    """Nobody polls either side's queue: both measure the start alone, not the running.

    Beside the rates it reports CPU milliseconds per start for each process, because on a
    small machine every process shares the same cores: the sum bounds the throughput."""
    semaphore = asyncio.Semaphore(concurrency)
    server = dev_server_pid()

    async def ours_one() -> None:
        async with semaphore:
            answer = await idle_api.post(
                "/api/v1/jobs", json={"stages": [{"name": "noop", "run": ["true"]}]}
            )
            answer.raise_for_status()

    async def raw_one() -> None:
        async with semaphore:
            await client.start_workflow(
                "Idle", id=f"raw-start-{uuid.uuid4()}", task_queue="bench-idle"
            )

    def cpu() -> dict[str, float]:
        # The client spawned every other process: count its own CPU alone.
        return {
            "api": cpu_seconds(api_pid),
            "temporal": cpu_seconds(server),
            "client": cpu_seconds(os.getpid(), with_children=False),
        }

    async def paced(one: Callable[[], Awaitable[None]], rate: float) -> None:
        start = time.perf_counter()

        async def at(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            await one()

        await asyncio.gather(*(at(i) for i in range(n)))

    # A process's first requests pay once for what it builds lazily (compiled statements,
    # validators, connections): not a cost of each create, nor of each raw start.
    await asyncio.gather(*(one() for one in (ours_one, raw_one) for _ in range(20)))
    figures: dict[str, float] = {}
    # The server's CPU per start grows as starts come slower (its own work is spread over
    # fewer of them): "paced" is raw again at our rate, the fair baseline for that figure.
    for side in ("raw", "ours", "paced"):
        before = cpu()
        start = time.perf_counter()
        if side == "paced":
            await paced(raw_one, figures["ours_per_s"])
        else:
            await asyncio.gather(*((raw_one if side == "raw" else ours_one)() for _ in range(n)))
        figures[f"{side}_per_s"] = n / (time.perf_counter() - start)
        for name, seconds in cpu().items():
            figures[f"{side}_{name}_ms"] = (seconds - before[name]) * 1000 / n
    return figures


async def sequential_stages(
    bench: Bench, client: Client, n: int, rounds: int, timeout_s: float | None
) -> dict[str, float]:
    """A job of `n` stages running `true`, beside a bare workflow of `n` activities running
    `true`; rounds alternate the two. Stages declared short (`timeout_s` ≤ 10) run as one
    series in a local activity; without a timeout, as one series in an ordinary activity.

    Each side runs twice back to back and the second counts: on a server with Temporal's
    defaults, the history service reads its transfer queue 20 times a second with a burst
    of 20 after a pause, and alternating would hand that burst to whichever side waited."""
    ours: list[float] = []
    bare: list[float] = []
    stage: dict[str, Any] = {"run": ["true"]}
    if timeout_s is not None:
        stage["timeout_seconds"] = timeout_s

    async def one_job() -> float:
        job_id = await bench.job([{"name": f"s{i}", **stage} for i in range(n)])
        await bench.wait_state(job_id, "completed")
        events = await bench.events(job_id)
        return (ts(events[-1]["ts"]) - ts(events[0]["ts"])).total_seconds()

    async def one_bare() -> float:
        start = time.perf_counter()
        await client.execute_workflow(
            RawSteps.run, n, id=f"raw-steps-{uuid.uuid4()}", task_queue="bench-steps"
        )
        return time.perf_counter() - start

    async with Worker(
        client, task_queue="bench-steps", workflows=[RawSteps], activities=[run_true]
    ):
        for _ in range(rounds):
            ours.append([await one_job(), await one_job()][1])
            bare.append([await one_bare(), await one_bare()][1])
    return {"ours": statistics.median(ours), "bare": statistics.median(bare)}


async def sse_fanout(bench: Bench, subscribers: int, stages: int) -> dict[str, float]:
    job_id = await bench.job(
        [{"name": "hold", "run": ["true"], "gate": {"required": True}}]
        + [{"name": f"s{i}", "run": ["true"]} for i in range(stages)]
    )
    await bench.wait_state(job_id, "needs_approval")
    delays: list[float] = []
    ready = asyncio.Event()
    connected = 0

    async def subscriber() -> None:
        nonlocal connected
        async with bench.http.stream("GET", f"/api/v1/jobs/{job_id}/events/stream") as response:
            async for frame in frames(response):
                if frame.event == "connected":
                    connected += 1
                    if connected == subscribers:
                        ready.set()
                if frame.event == "done":
                    return
                if frame.data and frame.id is not None and ready.is_set():
                    received = datetime.now(UTC)
                    delays.append((received - ts(frame.data["ts"])).total_seconds() * 1000)

    tasks = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
    await asyncio.wait_for(ready.wait(), 60)
    await asyncio.sleep(0.5)  # let every stream finish its replay
    delays.clear()
    (await bench.http.post(f"/api/v1/jobs/{job_id}/approve")).raise_for_status()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return {"p50": statistics.median(delays), "p99": pct(delays, 0.99), "count": len(delays)}


async def wait_ready(http: httpx.AsyncClient) -> None:
    while True:
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)


def spawn(
    argv: list[str], settings: Settings, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
    env.update(
        PILOTHOUSE_DATA_DIR=str(settings.data_dir),
        PILOTHOUSE_DATABASE_URL=settings.db_url,
        PILOTHOUSE_TEMPORAL_ADDRESS=settings.temporal_target,
        PILOTHOUSE_API_PORT=str(settings.api_port),
        PILOTHOUSE_TASK_QUEUE=settings.task_queue,
        PILOTHOUSE_LOG_LEVEL="warning",
        **(extra or {}),
    )
    env.update(extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.asynccontextmanager
async def processes(
    database_url: str | None, extra_env: dict[str, str] | None = None, *, tuned: bool = True
) -> AsyncIterator[
    tuple[WorkflowEnvironment, Settings, str, subprocess.Popen[bytes], subprocess.Popen[bytes]]
]:
    """A dev server, and the API and the worker as their own processes, on a fresh data
    directory: (the server, the settings, an admin token, the API, the worker). Both get
    `extra_env` (more PILOTHOUSE_* settings). `tuned`: the server as `pilothouse up` runs
    it (stack.DEV_SERVER_TUNING), else with Temporal's defaults."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=attributes.ALL,
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--sqlite-pragma",
            "journal_mode=WAL",
            *(DEV_SERVER_TUNING if tuned else []),
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=database_url,
            temporal_address=env.client.service_client.config.target_host,
            api_port=free_port(),
            _env_file=None,
        )
        migrate.upgrade(settings.db_url)
        db = Database(settings.db_url)
        async with db.session() as session:
            _, token = await create_token(session, f"bench-{uuid.uuid4().hex[:6]}", [Scope.admin])
            await session.commit()
        await db.dispose()
        api = spawn(["api"], settings, extra_env)
        worker = spawn(["worker"], settings, extra_env)
        try:
            yield env, settings, token, api, worker
        finally:
            for process in (api, worker):
                process.terminate()
                process.wait(30)
            await env.shutdown()


async def main(
    database_url: str | None, rounds: int, api_workers: int, only: str, tuned: bool
) -> None:
    async with processes(database_url, tuned=tuned) as (env, settings, token, api, worker):
        bench = Bench(env, settings, token)
        client = await connect(settings)
        try:
            await wait_ready(bench.http)
            print(describe(database_url, tuned))
            if "a" in only:
                a = await decision_latency(bench, client, rounds)
                print(
                    f"(a) decision → next stage started  p50 {a['ours_p50']:6.1f} ms  p95 {a['ours_p95']:6.1f} ms"
                    f"   raw execute_update p50 {a['raw_p50']:5.1f} ms  p95 {a['raw_p95']:5.1f} ms"
                    f"   ratio p50 {a['ours_p50'] / a['raw_p50']:4.2f}x  (target ≤ 2x)"
                )
                print(beside_warm(a["ours_p50"], a["raw_warm_p50"]))
            if "b" in only:
                idle = settings.model_copy(
                    update={"task_queue": "bench-idle", "api_port": free_port()}
                )
                idle_api = spawn(["api", "--workers", str(api_workers)], idle)
                idle_http = httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{idle.api_port}",
                    headers=bench.http.headers,
                    timeout=60,
                )
                await wait_ready(idle_http)
                b = await start_throughput(idle_http, idle_api.pid, client, 500, 20)
                await idle_http.aclose()
                idle_api.terminate()
                idle_api.wait(30)
                print(
                    f"(b) 500 creates  POST /api/v1/jobs {b['ours_per_s']:6.1f}/s   raw start_workflow"
                    f" {b['raw_per_s']:6.1f}/s   ratio {b['ours_per_s'] / b['raw_per_s']:4.2f}x  (target ≥ 0.8x)"
                )
                labels = {"ours": "ours", "raw": "raw", "paced": "raw at our rate"}
                for side, label in labels.items():
                    print(
                        f"    CPU ms per start, {label:15}:  API {b[f'{side}_api_ms']:4.2f}"
                        f"  Temporal server {b[f'{side}_temporal_ms']:4.2f}"
                        f"  load generator {b[f'{side}_client_ms']:4.2f}"
                    )
                print(
                    f"    Temporal server CPU per start, ours / raw at our rate"
                    f" {b['ours_temporal_ms'] / b['paced_temporal_ms']:4.2f}x  (target ≤ 1.1x);"
                    f"  API CPU per create {b['ours_api_ms']:4.2f} ms  (target ≤ 2.5 ms)"
                )
            if "c" in only:
                for timeout_s, label in ((10.0, "declared 10 s"), (None, "no timeout")):
                    c = await sequential_stages(bench, client, 40, 5, timeout_s)
                    print(
                        f"(c) 40 sequential `true` stages, {label:13}  {c['ours']:5.2f} s"
                        f"   bare 40 activities {c['bare']:5.2f} s"
                        f"   ratio {c['ours'] / c['bare']:4.2f}x  (target ≤ 0.45x)"
                    )
            if "d" in only:
                d = await sse_fanout(bench, 100, 20)
                print(
                    f"(d) 100 SSE subscribers  written → received  p50 {d['p50']:6.1f} ms"
                    f"  p99 {d['p99']:6.1f} ms over {d['count']:.0f} deliveries  (target p99 < 250 ms)"
                )
            print(
                f"peak memory  api {peak_kib(api.pid) / 1024:6.1f} MiB   worker {peak_kib(worker.pid) / 1024:6.1f} MiB"
                f"   bench client {peak_kib(os.getpid()) / 1024:6.1f} MiB"
            )
        finally:
            await bench.http.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--api-workers", type=int, default=1, help="API processes for (b)")
    parser.add_argument("--only", default="abcd", help="which benchmarks to run, e.g. 'ac'")
    parser.add_argument(
        "--server",
        choices=["tuned", "default"],
        default="tuned",
        help="the dev server as `pilothouse up` runs it, or with Temporal's defaults",
    )
    args = parser.parse_args()
    asyncio.run(
        main(args.database_url, args.rounds, args.api_workers, args.only, args.server == "tuned")
    )
