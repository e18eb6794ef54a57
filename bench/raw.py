"""The raw Temporal baseline of the benchmarks, in a module of its own so that the workflow
sandbox re-imports nothing else."""

from __future__ import annotations

from temporalio import workflow


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
