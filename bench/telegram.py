"""Benchmark of the Telegram approval buttons, beside the API's own decision and raw
Temporal in the same run, on one dev server, with the API and the worker as their own
processes and a fake Bot API (tests/fake_telegram.py) in this one.

(a) a button press reaching POST /telegram/webhook → the next stage started (p50 over 50
    presses), beside POST /api/v1/jobs/{id}/approve → the next stage started, and a raw
    `execute_update` to a waiting workflow that then starts one activity

Rounds alternate the three, so each sees the same machine from moment to moment. The
stage's start comes from the event log's timestamp; the press is timed as it is sent (on
loopback, that is when it reaches the webhook).

Run: `make bench` or `python -m bench.telegram [--database-url URL] [--rounds 50]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from temporalio.worker import Worker

from bench.jobs import Bench, pct, peak_kib, processes, raw_result_ms, ts, wait_ready
from bench.raw import RawResult, run_true
from temporal_client import connect
from tests.fake_telegram import Call, FakeBotApi

CHAT = -1001
APPROVER = 777
SECRET = "bench-secret"
STAGES: list[dict[str, Any]] = [
    {"name": "a", "run": ["true"], "gate": {"required": True}},
    {"name": "b", "run": ["true"]},
]


async def next_stage_ms(bench: Bench, job_id: str, sent: datetime) -> float:
    await bench.wait_state(job_id, "completed")
    [started] = [
        e for e in await bench.events(job_id) if e["type"] == "stage_started" and e["stage"] == "b"
    ]
    return (ts(started["ts"]) - sent).total_seconds() * 1000


async def message_of(fake: FakeBotApi, job_id: str) -> Call:
    while True:
        for call in fake.called("sendMessage"):
            if job_id in call.params["text"] and call.result:
                return call
        await asyncio.sleep(0.05)


async def press_one(bench: Bench, fake: FakeBotApi, hook: httpx.AsyncClient) -> float:
    job_id = await bench.job(STAGES)
    await bench.wait_state(job_id, "needs_approval")
    sent_message = await message_of(fake, job_id)
    approve = next(b for b in sent_message.buttons if b["text"] == "Approve")
    update = fake.press(APPROVER, approve["callback_data"], sent_message)
    sent = datetime.now(UTC)
    answer = await hook.post(
        "/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )
    answer.raise_for_status()
    return await next_stage_ms(bench, job_id, sent)


async def api_one(bench: Bench) -> float:
    job_id = await bench.job(STAGES)
    await bench.wait_state(job_id, "needs_approval")
    sent = datetime.now(UTC)
    (await bench.http.post(f"/api/v1/jobs/{job_id}/approve")).raise_for_status()
    return await next_stage_ms(bench, job_id, sent)


def figures(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p95": pct(values, 0.95)}


async def main(database_url: str | None, rounds: int) -> None:
    async with FakeBotApi.serving() as fake:
        env = {
            "PILOTHOUSE_TELEGRAM_BOT_TOKEN": f"1:bench-{uuid.uuid4().hex}",
            "PILOTHOUSE_TELEGRAM_CHAT_IDS": str(CHAT),
            "PILOTHOUSE_TELEGRAM_WEBHOOK_SECRET": SECRET,
            "PILOTHOUSE_TELEGRAM_APPROVERS": json.dumps({APPROVER: "bench"}),
            "PILOTHOUSE_TELEGRAM_API_BASE": fake.base_url,
        }
        async with processes(database_url, env) as (env_, settings, token, api, worker):
            bench = Bench(env_, settings, token)
            hook = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=60)
            client = await connect(settings)
            try:
                await wait_ready(bench.http)
                print(
                    f"database: {'PostgreSQL' if database_url else 'SQLite'}; dev server, 2 cores"
                )
                telegram: list[float] = []
                api_side: list[float] = []
                raw: list[float] = []
                async with Worker(
                    client, task_queue="bench-raw", workflows=[RawResult], activities=[run_true]
                ):
                    for _ in range(rounds):
                        telegram.append(await press_one(bench, fake, hook))
                        api_side.append(await api_one(bench))
                        raw.append(await raw_result_ms(client, 0))
                t, a, r = figures(telegram), figures(api_side), figures(raw)
                edits = len(fake.called("editMessageText"))
                print(
                    f"(a) Telegram press → next stage started  p50 {t['p50']:6.1f} ms  p95 {t['p95']:6.1f} ms"
                    f"   API approve → next stage started p50 {a['p50']:6.1f} ms  p95 {a['p95']:6.1f} ms"
                    f"   ratio p50 {t['p50'] / a['p50']:4.2f}x"
                )
                print(
                    f"    raw update → activity started p50 {r['p50']:5.1f} ms  p95 {r['p95']:5.1f} ms"
                    f"   Telegram/raw p50 {t['p50'] / r['p50']:4.2f}x   over {rounds} presses,"
                    f" {edits} messages edited"
                )
                print(
                    f"peak memory  api {peak_kib(api.pid) / 1024:6.1f} MiB"
                    f"   worker {peak_kib(worker.pid) / 1024:6.1f} MiB"
                )
            finally:
                await hook.aclose()
                await bench.http.aclose()


def parse() -> Any:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rounds", type=int, default=50)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse()
    asyncio.run(main(args.database_url, args.rounds))
