"""Benchmarks of runs, each beside bare Temporal in the same run, on one dev server, with
the API and the worker as their own processes.

(a) one run of 3 tiers x 3 phases, `true` as every builder and auditor, end to end, beside
    a bare workflow that runs the same 18 activities (`true` each) in the same order; with
    the steps declared short (a local activity a phase) and without a timeout (an ordinary
    one a phase)
(b) an outside executor's `auditor_result` POST → the next phase's builder started (p50
    over 50), beside a raw `execute_update` to a waiting workflow that then starts one
    activity, each sent once its workflow has waited a while (`bench.jobs.IDLE_S`)

Run: `python -m bench.runs [--database-url URL] [--rounds 50]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from bench.jobs import (
    IDLE_S,
    beside_warm,
    describe,
    pct,
    peak_kib,
    processes,
    raw_result_ms,
    ts,
    wait_ready,
)
from bench.raw import RawResult, RawSteps, run_true
from temporal_client import connect

TRUE = {"executor": "command", "run": ["true"]}
# A step that declares a short timeout runs as a local activity (workflows/step_calls.py).
SHORT_TRUE = TRUE | {"timeout_seconds": 10}
EXTERNAL = {"executor": "external", "timeout_seconds": 600}


def run_body(run_id: str, tiers: int, phases: int, **phase: Any) -> dict[str, Any]:
    return {
        "run": {"run_id": run_id, "max_phases": tiers * phases},
        "tiers": [{"tier_id": f"t{t}", "tier_index": t, "name": f"t{t}"} for t in range(tiers)],
        "phases": [
            {
                "phase_id": f"p{t}-{p}",
                "phase_index": p,
                "tier_id": f"t{t}",
                "name": f"p{t}-{p}",
                **phase,
            }
            for t in range(tiers)
            for p in range(phases)
        ],
    }


async def events(http: httpx.AsyncClient, run_id: str, after: int = 0) -> list[dict[str, Any]]:
    page = await http.get(f"/runs/{run_id}/events", params={"after": after, "limit": 500})
    page.raise_for_status()
    items: list[dict[str, Any]] = page.json()["items"]
    return items


async def wait_event(
    http: httpx.AsyncClient, run_id: str, kind: str, stage: str | None = None, after: int = 0
) -> dict[str, Any]:
    """The first event of `kind` (at `stage`) after event `after`. Figures come from the
    event log's timestamps, so a slow poll costs no accuracy, and a fast one would take
    the CPU from what is measured. Each poll waits first: one sent as soon as a result is
    posted would read the log while the step being timed writes it."""
    while True:
        await asyncio.sleep(0.1)
        for event in await events(http, run_id, after):
            if event["type"] == kind and (stage is None or event["stage"] == stage):
                return event


async def whole_run(
    http: httpx.AsyncClient, client: Client, rounds: int, step: dict[str, Any]
) -> dict[str, float]:
    """Rounds alternate ours and bare, so both see the same machine. Each side first runs
    a warm-up of the same 18 steps (ours as a job: /runs/start allows 10 a minute), as an
    idle server dispatches its first ~20 workflow tasks faster (see bench/jobs.py (c))."""
    ours: list[float] = []
    bare: list[float] = []
    warm = [{"name": f"s{i}", "run": ["true"]} | step for i in range(18)]
    warm = [{k: v for k, v in s.items() if k != "executor"} for s in warm]
    for n in range(rounds):
        job = await http.post("/api/v1/jobs", json={"stages": warm})
        job.raise_for_status()
        while (await http.get(f"/api/v1/jobs/{job.json()['id']}")).json()["state"] != "completed":
            await asyncio.sleep(0.05)
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        answer = await http.post(
            "/runs/start", json=run_body(run_id, 3, 3, builder=step, auditor=step)
        )
        answer.raise_for_status()
        end = await wait_event(http, run_id, "run_done_success")
        first = (await events(http, run_id))[0]
        ours.append((ts(end["ts"]) - ts(first["ts"])).total_seconds())
        await client.execute_workflow(
            RawSteps.run, 18, id=f"raw-warm-{n}-{uuid.uuid4()}", task_queue="bench-raw"
        )
        start = time.perf_counter()
        await client.execute_workflow(
            RawSteps.run, 18, id=f"raw-steps-{n}-{uuid.uuid4()}", task_queue="bench-raw"
        )
        bare.append(time.perf_counter() - start)
    return {"ours": statistics.median(ours), "bare": statistics.median(bare)}


async def result_latency(http: httpx.AsyncClient, client: Client, rounds: int) -> dict[str, float]:
    """Each side posts once its workflow has waited, and nothing has run, for `IDLE_S`;
    raw also right after its query (`raw_warm`)."""
    run_id = f"bench-ext-{uuid.uuid4().hex[:8]}"
    body = run_body(run_id, 1, rounds + 1, builder=TRUE, auditor=EXTERNAL)
    (await http.post("/runs/start", json=body)).raise_for_status()

    ours: list[float] = []
    raw: list[float] = []
    warm: list[float] = []
    seen = 0
    for p in range(rounds):
        phase = f"p0-{p}"
        # Only the events since the last round: the whole log grows with every phase.
        seen = (await wait_event(http, run_id, "auditor_awaited", phase, seen))["id"]
        # Raw's rounds while the run waits, so that neither runs beside the other; then
        # ours, once nothing has run for as long as raw's idle workflow waited.
        raw.append(await raw_result_ms(client, IDLE_S))
        warm.append(await raw_result_ms(client, 0))
        await asyncio.sleep(IDLE_S)
        sent = datetime.now(UTC)
        answer = await http.post(
            f"/runs/{run_id}/phases/{phase}/auditor_result",
            json={
                "phase_id": phase,
                "run_id": run_id,
                "review_notes": "ok",
                "recommendation": "approve",
            },
        )
        answer.raise_for_status()
        started = await wait_event(http, run_id, "stage_started", f"p0-{p + 1}.builder", seen)
        ours.append((ts(started["ts"]) - sent).total_seconds() * 1000)
    await http.post(f"/runs/{run_id}/cancel")
    return {
        "ours_p50": statistics.median(ours),
        "ours_p95": pct(ours, 0.95),
        "raw_p50": statistics.median(raw),
        "raw_p95": pct(raw, 0.95),
        "raw_warm_p50": statistics.median(warm),
    }


async def main(database_url: str | None, rounds: int, only: str, tuned: bool) -> None:
    async with processes(database_url, tuned=tuned) as (_, settings, token, api, worker):
        http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        client = await connect(settings)
        try:
            await wait_ready(http)
            print(describe(database_url, tuned))
            async with Worker(
                client,
                task_queue="bench-raw",
                workflows=[RawSteps, RawResult],
                activities=[run_true],
            ):
                if "a" in only:
                    # /runs/start allows 10 a minute: a few rounds of a whole run each.
                    for step, label in ((SHORT_TRUE, "declared 10 s"), (TRUE, "no timeout")):
                        a = await whole_run(http, client, min(rounds, 4), step)
                        print(
                            f"(a) 3 tiers x 3 phases, `true` builders and auditors, {label:13}"
                            f"  {a['ours']:5.2f} s   bare 18 activities {a['bare']:5.2f} s"
                            f"   ratio {a['ours'] / a['bare']:4.2f}x  (target ≤ 1.5x)"
                        )
                if "b" in only:
                    b = await result_latency(http, client, rounds)
                    print(
                        f"(b) auditor_result → next builder started  p50 {b['ours_p50']:6.1f} ms"
                        f"  p95 {b['ours_p95']:6.1f} ms   raw update → activity started"
                        f" p50 {b['raw_p50']:5.1f} ms  p95 {b['raw_p95']:5.1f} ms"
                        f"   ratio p50 {b['ours_p50'] / b['raw_p50']:4.2f}x  (target ≤ 1.5x)"
                    )
                    print(beside_warm(b["ours_p50"], b["raw_warm_p50"]))
            print(
                f"peak memory  api {peak_kib(api.pid) / 1024:6.1f} MiB"
                f"   worker {peak_kib(worker.pid) / 1024:6.1f} MiB"
            )
        finally:
            await http.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--only", default="ab", help="which benchmarks to run, e.g. 'a'")
    parser.add_argument(
        "--server",
        choices=["tuned", "default"],
        default="tuned",
        help="the dev server as `pilothouse up` runs it, or with Temporal's defaults",
    )
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.rounds, args.only, args.server == "tuned"))
