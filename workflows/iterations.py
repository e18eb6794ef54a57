"""The iteration loop: a long-lived workflow that owns a workspace and takes one instruction
at a time, through an Update.

Tasks are its first family (an instruction is an agent prompt); debug sessions (an argv)
and agent sessions (an agent query) come next on the same loop. The loop keeps the queue,
numbers the iterations, refuses an instruction while one runs, and carries what it has
seen across continue-as-new: Temporal forgets a run's update ids when it continues, so a
client retrying an instruction there would otherwise start it twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from settings import LIMITS
    from strict import Name, Strict
    from workflows.gate import Gated, refuse

# Update ids remembered across continue-as-new: enough for any client's retries.
MAX_SEEN = 1000


class InstructIn(Strict):
    prompt: str = Field(min_length=1, max_length=LIMITS.max_prompt_chars)
    by: Name


class InstructOut(BaseModel):
    iteration: int
    status: str


class Instruction(BaseModel):
    number: int
    prompt: str
    by: str


class LoopPlace(BaseModel):
    """What a loop carries into its next run when it continues as new."""

    iterations: int = 0
    queue: list[Instruction] = Field(default_factory=list)
    seen: dict[str, int] = Field(default_factory=dict, description="update id → iteration")
    state: str


class IterationLoop(Gated):
    """Base of every workflow that owns a workspace and iterates on instructions."""

    # The states in which an instruction is taken; a family names its own.
    accepting: frozenset[str] = frozenset()
    not_accepting_code = "NOT_AWAITING_INSTRUCTION"

    def __init__(self) -> None:
        super().__init__()
        self.state = "pending"
        self.iterations = 0
        self._queue: list[Instruction] = []
        self._seen: dict[str, int] = {}
        # Set, synchronously, once the loop has decided to end or continue as new: from then
        # on no Update is taken that the loop would not be there to carry out.
        self.closing = False

    def restore(self, place: LoopPlace) -> None:
        self.iterations = place.iterations
        self._queue = list(place.queue)
        self._seen = dict(place.seen)
        self.state = place.state

    def place(self) -> LoopPlace:
        recent = dict(list(self._seen.items())[-MAX_SEEN:])
        return LoopPlace(
            iterations=self.iterations, queue=list(self._queue), seen=recent, state=self.state
        )

    async def enqueue(self, prompt: str, by: str) -> None:
        """An instruction the workflow gives itself (a task's first prompt)."""
        self.iterations += 1
        item = Instruction(number=self.iterations, prompt=prompt, by=by)
        await self.accepted(item)
        self._queue.append(item)

    # --- the Update ------------------------------------------------------------------------

    @workflow.update
    async def instruct(self, request: InstructIn) -> InstructOut:
        update = workflow.current_update_info()
        update_id = update.id if update else ""
        if update_id in self._seen:
            return InstructOut(iteration=self._seen[update_id], status=self.state)
        self._check_instruct()
        self.iterations += 1
        item = Instruction(number=self.iterations, prompt=request.prompt, by=request.by)
        self._seen[update_id] = item.number
        # Taken at once, so a second instruction in the same workflow task is refused.
        self.state = "running"
        await self.accepted(item)
        self._queue.append(item)
        return InstructOut(iteration=item.number, status=self.state)

    async def accepted(self, item: Instruction) -> None:
        """Record an instruction as taken, before it runs and before the caller hears."""

    @instruct.validator
    def _validate_instruct(self, request: InstructIn) -> None:
        update = workflow.current_update_info()
        if update is None or update.id not in self._seen:
            self._check_instruct()

    def _check_instruct(self) -> None:
        if self.closing:
            raise refuse(self.not_accepting_code, f"the {self.kind} is finishing")
        if self.state not in self.accepting or self._queue:
            raise refuse(
                self.not_accepting_code,
                f"the {self.kind} is {self.state}; it takes an instruction when "
                + " or ".join(sorted(self.accepting)),
            )

    # --- waiting -------------------------------------------------------------------------

    async def next_work(
        self, idle_seconds: float, other: Callable[[], bool]
    ) -> Instruction | Literal["other", "idle"]:
        """The next instruction; `"other"` when `other()` holds first (the family's own
        requests); `"idle"` when nothing came for `idle_seconds`."""
        while True:
            try:
                await workflow.wait_condition(
                    lambda: bool(self._queue) or other(), timeout=timedelta(seconds=idle_seconds)
                )
            except TimeoutError:
                # An instruction being taken (recorded, not yet queued) is not idleness.
                if self.state in self.accepting:
                    self.closing = True
                    return "idle"
                continue
            if self._queue:
                return self._queue.pop(0)
            return "other"
