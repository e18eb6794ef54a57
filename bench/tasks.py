"""Benchmark of coding-agent tasks, beside bare Temporal in the same run, on one dev server,
with the API and the worker as their own processes.

(a) `POST /api/v1/tasks` → the agent's process started (p50 over N), on a warm mirror of a
    repository of ~5,000 files; the agent is `tests/fake_claude.py`, and "started" is when it
    appends its pid to its pid file (its own first act). Beside it: a bare workflow started
    → its one activity running `true` started. Target: p50 under 1 s.

Run: `python -m bench.tasks [--database-url URL] [--rounds 20] [--files 5000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from bench.jobs import pct, peak_kib, processes, wait_ready
from bench.raw import RawResult, run_true
from temporal_client import connect

FAKE = Path(__file__).resolve().parent.parent / "tests" / "fake_claude.py"
AGENT = (
    f"{sys.executable} {FAKE} -p {{prompt}} --output-format stream-json --verbose "
    "--max-turns {max_turns} --model {model} --permission-mode {mode}"
)


def make_origin(root: Path, files: int) -> Path:
    """A bare repository of `files` small files in 50 directories."""
    work = root / "work"
    for i in range(files):
        path = work / f"dir{i % 50:02d}" / f"file{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"line {i}\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=work, check=True)
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "files"], cwd=work, check=True)
    origin = root / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(origin)], check=True)
    return origin


async def agent_started(pids: Path, seen: int) -> float:
    """When the next agent appended its pid (epoch s): the file's modification time."""
    while not pids.exists() or len(pids.read_text().split()) <= seen:
        await asyncio.sleep(0.005)
    return pids.stat().st_mtime


async def task_to_agent(
    http: httpx.AsyncClient, client: Client, origin: Path, pids: Path, rounds: int
) -> dict[str, float]:
    """Rounds alternate ours and bare, so both see the same machine."""
    warm = await http.post("/api/v1/tasks", json={"repo_url": str(origin), "prompt": "warm"})
    warm.raise_for_status()
    await agent_started(pids, 0)
    ours: list[float] = []
    bare: list[float] = []
    for n in range(rounds):
        seen = len(pids.read_text().split())
        sent = time.time()
        answer = await http.post("/api/v1/tasks", json={"repo_url": str(origin), "prompt": "go"})
        answer.raise_for_status()
        ours.append((await agent_started(pids, seen) - sent) * 1000)

        handle = await client.start_workflow(
            RawResult.run, id=f"raw-task-{n}-{uuid.uuid4()}", task_queue="bench-raw"
        )
        before = time.time()
        await handle.execute_update(RawResult.post, "go")
        bare.append((await handle.result() - before) * 1000)
    return {
        "ours_p50": statistics.median(ours),
        "ours_p95": pct(ours, 0.95),
        "bare_p50": statistics.median(bare),
    }


async def main(database_url: str | None, rounds: int, files: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        origin = make_origin(Path(tmp) / "remote", files)
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
                print(f"database: {'PostgreSQL' if database_url else 'SQLite'}; {files} files")
                async with Worker(
                    client, task_queue="bench-raw", workflows=[RawResult], activities=[run_true]
                ):
                    a = await task_to_agent(http, client, origin, pids, rounds)
                print(
                    f"(a) task created → agent started  p50 {a['ours_p50']:6.1f} ms"
                    f"  p95 {a['ours_p95']:6.1f} ms   (target p50 < 1000 ms)"
                    f"   bare update → activity started p50 {a['bare_p50']:5.1f} ms"
                    f"   ratio p50 {a['ours_p50'] / a['bare_p50']:5.1f}x"
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
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.rounds, args.files))
