"""The raw Temporal baseline of the benchmarks, in a module of its own so that the workflow
sandbox re-imports nothing else."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio import activity, workflow


@workflow.defn(name="RawGate")
class RawGate:
    """A workflow that waits for one Update, then ends."""

    def __init__(self) -> None:
        self.decided = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.decided)

    @workflow.query
    def waiting(self) -> bool:
        return not self.decided

    @workflow.update
    async def decide(self, outcome: str) -> str:
        self.decided = True
        return outcome


@activity.defn(name="raw.true")
async def run_true() -> float:
    """Run `true` as a subprocess, as a step does; answers when it started (epoch s)."""
    started = time.time()
    process = await asyncio.create_subprocess_exec("true")
    await process.wait()
    return started


@workflow.defn(name="RawSteps")
class RawSteps:
    """Activities one after another: the bare baseline of a run's builders and auditors."""

    @workflow.run
    async def run(self, count: int) -> None:
        for _ in range(count):
            await workflow.execute_activity(run_true, start_to_close_timeout=timedelta(seconds=30))


@workflow.defn(name="RawResult")
class RawResult:
    """Waits for an Update (an executor's result), then starts one activity."""

    def __init__(self) -> None:
        self.posted = False

    @workflow.run
    async def run(self) -> float:
        await workflow.wait_condition(lambda: self.posted)
        started: float = await workflow.execute_activity(
            run_true, start_to_close_timeout=timedelta(seconds=30)
        )
        return started

    @workflow.query
    def waiting(self) -> bool:
        return not self.posted

    @workflow.update
    async def post(self, result: str) -> str:
        self.posted = True
        return result


@workflow.defn(name="RawOne")
class RawOne:
    """One activity: what a bare schedule's action starts, the baseline of a firing."""

    @workflow.run
    async def run(self) -> float:
        started: float = await workflow.execute_activity(
            run_true, start_to_close_timeout=timedelta(seconds=30)
        )
        return started
