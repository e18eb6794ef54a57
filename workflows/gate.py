"""The approval gate: one implementation, inherited by every workflow family.

A gate opens, is recorded, and waits for decisions (a Temporal Update with a validator),
its timer, or an auto-approval. The workflow alone holds its state. A decision is taken at
once and recorded by the next activity the workflow runs, before that activity does
anything else (see `activities/records.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from activities.notify import GateClosedNotice, GateNotice, GateReminderNotice
    from activities.records import (
        CarriesDecisions,
        DecisionRecord,
        GateOpened,
        GateReminder,
        Notifying,
        Transition,
        gate_end,
    )
    from settings import LIMITS
    from strict import Id, JsonObject, JsonSchema, Name, Strict, Text
    from workflows import attributes

RECORD_TIMEOUT = timedelta(seconds=30)
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5)
)

Via = Literal["api", "telegram", "timer", "auto"]
Outcome = Literal["approve", "reject"]
# Workflows that took a decision before decisions were carried record each on its own.
CARRIED_DECISIONS = "decisions-carried-by-the-next-activity"
# Gates send Telegram messages when the worker has Telegram on (`records.gate_opened` says).
TELEGRAM_NOTICES = "telegram-notices"
# Workflows from before upserted their state at every transition, changed or not.
STATE_ON_CHANGE = "state-attribute-upserted-on-change"
# The notify activities never raise; their retries are for a worker lost on the way.
NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
NOTIFY_MARGIN = timedelta(seconds=30)


class GateConfig(Strict):
    """How a gate decides. `timeout_minutes` is the operator file's spelling."""

    required: bool = True
    auto_approve: bool = False
    auto_approve_after_s: float | None = Field(
        None,
        gt=0,
        le=LIMITS.max_duration_s,
        description="The operator file's timer: with `auto_approve`, approve after this long",
    )
    timeout_seconds: float | None = Field(None, gt=0, le=LIMITS.max_duration_s)
    timeout_minutes: float | None = Field(None, gt=0, le=LIMITS.max_duration_s / 60)
    on_timeout: Literal["approve", "reject", "fail"] = "reject"
    required_approvals: int = Field(1, ge=1, le=LIMITS.max_approvals)
    approvers: list[Name] = Field(default_factory=list, max_length=LIMITS.max_list_items)
    reminder_every_seconds: float | None = Field(
        None, ge=LIMITS.min_reminder_s, le=LIMITS.max_duration_s
    )
    reason_required_on_reject: bool = True
    input_schema: JsonSchema | None = Field(
        None, description="A JSON Schema (2020-12) that a decision's `input` must match"
    )

    @model_validator(mode="after")
    def _one_timeout(self) -> GateConfig:
        given = [
            f
            for f in ("timeout_seconds", "timeout_minutes", "auto_approve_after_s")
            if getattr(self, f) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give one of {' and '.join(given)}, not both")
        if self.timeout_minutes is not None:
            self.timeout_seconds = self.timeout_minutes * 60
            self.timeout_minutes = None
        if self.auto_approve_after_s is not None:
            if self.auto_approve:
                self.timeout_seconds, self.on_timeout = self.auto_approve_after_s, "approve"
                self.auto_approve = False
            self.auto_approve_after_s = None
        return self


class DecisionIn(Strict):
    """One decision on one gate. `by` is the caller's identity, never the body's."""

    gate_id: Id | None = Field(None, description="The gate; the open one when absent")
    outcome: Outcome
    by: Name
    via: Via = "api"
    reason: Text | None = None
    input: JsonObject | None = None


class DecisionOut(BaseModel):
    gate_id: str
    stage: str
    outcome: Outcome
    gate_state: Literal["open", "approved", "rejected", "failed"]
    approvals: list[str]
    approvals_needed: int


class GateResult(BaseModel):
    gate_id: str
    state: Literal["approved", "rejected", "failed"]
    by: str
    via: Via
    reason: str | None = None
    input: dict[str, Any] | None = None


class GateState:
    """One opening of a gate, inside the workflow."""

    def __init__(self, gate_id: str, stage: str, config: GateConfig, opened_at: datetime) -> None:
        self.id = gate_id
        self.stage = stage
        self.config = config
        self.opened_at = opened_at
        self.approvals: list[str] = []
        self.deciders: set[str] = set()
        self.result: GateResult | None = None
        self.recording = 0
        self.recorded = False

    @property
    def state(self) -> Literal["open", "approved", "rejected", "failed"]:
        return self.result.state if self.result else "open"

    def settle(self, d: DecisionIn) -> None:
        """Apply a checked decision, synchronously, before anything awaits."""
        self.deciders.add(d.by)
        if d.outcome == "approve":
            self.approvals.append(d.by)
            if len(self.approvals) < self.config.required_approvals and d.via not in (
                "timer",
                "auto",
            ):
                return
            state: Literal["approved", "rejected", "failed"] = "approved"
        else:
            state = "rejected"
        self.result = GateResult(
            gate_id=self.id, state=state, by=d.by, via=d.via, reason=d.reason, input=d.input
        )


@dataclass
class Messages:
    """A gate's Telegram messages, inside the workflow: what follows waits for the send."""

    within: timedelta
    sent: asyncio.Task[None] | None = None
    closed: bool = False


# Attempts an activity gets for workers lost while it ran, beyond its own retries.
WORKER_LOSSES = 2


def cause(err: ActivityError) -> str:
    """Why an activity failed, in words: its ApplicationError's message when it has one."""
    inner = err.cause
    return inner.message if isinstance(inner, ApplicationError) else str(inner or err)


def refuse(code: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=code, non_retryable=True)


LOCAL_FAILURES_WRAPPED = "local-activity-failures-wrapped"


async def execute_local(activity: str, arg: Any, **options: Any) -> Any:
    """`workflow.execute_local_activity`, failing as `execute_activity` does. The SDK raises
    a local activity's own failure (an ApplicationError, a timeout) bare, where an ordinary
    activity's comes as the cause of an ActivityError: wrapped alike, every caller reads
    one shape, and a failing short step is not taken for an error of the workflow's own."""
    try:
        return await workflow.execute_local_activity(activity, arg, **options)
    except FailureError as err:
        if isinstance(err, ActivityError) or is_cancelled_exception(err):
            raise
        # A history that took the bare failure for the workflow's own replays as it ran.
        if not workflow.patched(LOCAL_FAILURES_WRAPPED):
            raise
        raise ActivityError(
            "Local activity task failed",
            scheduled_event_id=0,
            started_event_id=0,
            identity="",
            activity_type=activity,
            activity_id="",
            retry_state=None,
        ) from err


class Gated:
    """Base class of every workflow with gates: the `decide` Update and `run_gate`."""

    kind: str = "resource"
    waiting_state: str = "needs_approval"

    def __init__(self) -> None:
        # Several gates may be open at once (a run's parallel phases); most have one.
        self._open: dict[str, GateState] = {}
        self._closed: dict[str, GateState] = {}
        self._unrecorded: list[DecisionRecord] = []
        self._deferred: list[Transition] = []
        self._messages: dict[str, Messages] = {}
        self._notices: list[asyncio.Task[None]] = []
        # Update handlers running, and the history length of the workflow task in which one
        # last ended: that task carries its answer, which a local activity would hold.
        self._answering = 0
        self._answered_at = -1
        self._shown_state: str | None = None

    # --- activities that write ---------------------------------------------------------

    async def carrying(
        self, activity: str, fact: CarriesDecisions, *, local: bool = False, **options: Any
    ) -> Any:
        """Run an activity that writes (`local`: as a local activity), handing it the
        decisions not yet recorded and the deferred transitions. Decisions stay pending
        until an activity that carried them has succeeded; carrying one twice is harmless,
        as the writer skips one it finds."""
        carried = list(self._unrecorded)
        fact.decisions = carried
        # Deferred transitions are not idempotent: each goes to one activity only (its
        # retries carry the same input), so two running at once never both write one.
        fact.facts, self._deferred = self._deferred, []
        execute = execute_local if local else workflow.execute_activity
        result = await execute(activity, fact, **options)
        written = {d.id for d in carried}
        self._unrecorded = [d for d in self._unrecorded if d.id not in written]
        return result

    def defer(self, fact: Transition) -> None:
        """Record a transition with the next activity the workflow runs, rather than with
        one of its own: a step's start, a gate's opening or the end carries it, first."""
        self._deferred.append(fact)

    async def record(self, activity: str, fact: CarriesDecisions) -> Any:
        """Write a fact through a `records.*` activity: the one way workflows record, with
        one timeout and one retry policy. A resource's end (a final transition) also ends
        its gates' Telegram messages, and waits for them, so none is left with buttons."""
        result = await self.carrying(
            activity, fact, start_to_close_timeout=RECORD_TIMEOUT, retry_policy=RECORD_RETRY
        )
        if isinstance(fact, Transition) and fact.final:
            await self.notices_done(fact)
        return result

    # --- Telegram messages ---------------------------------------------------------------

    def _notice(self, gate_id: str, activity: str, notice: Any) -> asyncio.Task[None]:
        """Start a notify activity beside the workflow's own work, never waited on to go on:
        Telegram neither slows a gate down nor fails it. It runs after the gate's messages
        are sent, as the edit needs their ids."""
        messages = self._messages[gate_id]
        sent = messages.sent

        async def run() -> None:
            if sent is not None:
                await sent
            try:
                await workflow.execute_activity(
                    activity,
                    notice,
                    start_to_close_timeout=messages.within + NOTIFY_MARGIN,
                    retry_policy=NOTIFY_RETRY,
                )
            except ActivityError as err:
                workflow.logger.warning("%s for gate %s did not finish: %s", activity, gate_id, err)

        task = asyncio.create_task(run())
        self._notices.append(task)
        return task

    def _notice_closed(self, gate: GateState, notice: GateClosedNotice) -> None:
        messages = self._messages.get(gate.id)
        if messages is not None and not messages.closed:
            messages.closed = True
            self._notice(gate.id, "notify.gate_closed", notice)

    async def notices_done(self, end: Transition | None = None) -> None:
        """Wait for the Telegram messages in flight; with the resource's `end`, first close
        the messages of gates it leaves open (canceled or failed with it)."""
        if end is not None:
            for gate in self._open.values():
                self._notice_closed(
                    gate,
                    GateClosedNotice(
                        gate_id=gate.id,
                        resource_kind=end.resource_kind,
                        resource_id=end.resource_id,
                        state=gate_end(end.state),
                        reason=end.error or end.message,
                        decided_at=workflow.now(),
                    ),
                )
        pending = [task for task in self._notices if not task.done()]
        self._notices = pending
        if pending:
            await asyncio.gather(*pending)

    def gate_recorded(self, gate_id: str) -> bool:
        """Whether a gate's row exists: the API can then decide it by its id."""
        gate = self._open.get(gate_id) or self._closed.get(gate_id)
        return gate is not None and gate.recorded

    def show_state(self, state: str) -> None:
        """The resource's state as the Temporal UI's `PilothouseState`. Each upsert is a
        history event and a visibility write: a state already shown is not sent again."""
        if state == self._shown_state and workflow.patched(STATE_ON_CHANGE):
            return
        self._shown_state = state
        workflow.upsert_search_attributes([attributes.STATE.value_set(state)])

    # --- answering Updates ----------------------------------------------------------------

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Wraps every Update handler's body. An Update's answer leaves with the workflow
        task in which its handler ends, and a local activity holds that task until it ends:
        `may_hold_task` says no while a handler runs or in the task that answers one."""
        self._answering += 1
        try:
            yield
        finally:
            self._answering -= 1
            self._answered_at = workflow.info().get_current_history_length()

    def may_hold_task(self) -> bool:
        """Whether a local activity may start now without holding an Update's answer."""
        length = workflow.info().get_current_history_length()
        return self._answering == 0 and self._answered_at != length

    # --- the Update --------------------------------------------------------------------

    def _check(self, d: DecisionIn) -> GateState:
        if d.gate_id:
            gate = self._open.get(d.gate_id)
            if gate is None:
                if d.gate_id in self._closed:
                    raise refuse("GATE_ALREADY_DECIDED", f"gate {d.gate_id} is already decided")
                raise refuse("GATE_NOT_OPEN", f"gate {d.gate_id} is not open")
        elif len(self._open) == 1:
            [gate] = self._open.values()
        elif self._open:
            raise refuse("GATE_AMBIGUOUS", f"gates {', '.join(self._open)} are open: name one")
        else:
            raise refuse("GATE_NOT_OPEN", "no gate is open")
        if gate.result is not None:
            raise refuse("GATE_ALREADY_DECIDED", f"gate {gate.id} is already {gate.state}")
        config = gate.config
        if config.approvers and d.by not in config.approvers and d.via in ("api", "telegram"):
            raise refuse("NOT_AN_APPROVER", f"{d.by!r} is not on gate {gate.id}'s approvers")
        if d.by in gate.deciders:
            raise refuse("DUPLICATE_APPROVER", f"{d.by!r} has already decided gate {gate.id}")
        if d.outcome == "reject" and config.reason_required_on_reject and not d.reason:
            raise refuse("REASON_REQUIRED", "reason: a rejection of this gate needs a reason")
        return gate

    @workflow.update
    async def decide(self, d: DecisionIn) -> DecisionOut:
        with self.answering():
            # Updates in one workflow task all pass the validator before any handler runs,
            # so the handler checks again, and settles before its first await.
            gate = self._check(d)
            gate.settle(d)
            await self._keep(gate, d, workflow.current_update_info())
            return DecisionOut(
                gate_id=gate.id,
                stage=gate.stage,
                outcome=d.outcome,
                gate_state=gate.state,
                approvals=list(gate.approvals),
                approvals_needed=gate.config.required_approvals,
            )

    @decide.validator
    def _validate_decide(self, d: DecisionIn) -> None:
        self._check(d)

    async def _keep(
        self, gate: GateState, d: DecisionIn, update: workflow.UpdateInfo | None
    ) -> None:
        # Update ids are unique per workflow; the decisions table is global.
        workflow_id = workflow.info().workflow_id
        record = DecisionRecord(
            id=f"{workflow_id}/{update.id}" if update else f"{gate.id}/{d.via}",
            gate_id=gate.id,
            resource_kind=self.kind,
            resource_id=workflow_id,
            stage=gate.stage,
            outcome=d.outcome,
            by=d.by,
            via=d.via,
            reason=d.reason,
            input=d.input,
            gate_state=gate.state,
            approvals=list(gate.approvals),
        )
        if workflow.patched(CARRIED_DECISIONS):
            self._unrecorded.append(record)
            if gate.result is None:
                # An approval short of the quorum starts nothing that could carry it.
                await self.record("records.decisions", CarriesDecisions())
            return
        gate.recording += 1
        try:
            await workflow.execute_activity(
                "records.decision",
                record,
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
            )
        finally:
            gate.recording -= 1

    # --- waiting on a gate -----------------------------------------------------------------

    async def run_gate(
        self,
        stage: str,
        config: GateConfig,
        opening: int,
        auto_approve_allowed: bool,
        why: str | None = None,
    ) -> GateResult:
        """Open a gate and wait for its result. `why` says what opened it, when the
        configuration alone does not (an auditor's escalation, a risky patch, a budget)."""
        info = workflow.info()
        gate = GateState(f"{info.workflow_id}:{stage}:{opening}", stage, config, workflow.now())
        deadline = (
            gate.opened_at + timedelta(seconds=config.timeout_seconds)
            if config.timeout_seconds
            else None
        )
        self._open[gate.id] = gate
        workflow.upsert_search_attributes([attributes.GATE.value_set(gate.id)])
        workflow.set_current_details(
            f"**Stage** {stage}\n\n**Gate** {gate.id}: waiting for a decision"
        )
        notifying = await self.record(
            "records.gate_opened",
            GateOpened(
                gate_id=gate.id,
                resource_kind=self.kind,
                resource_id=info.workflow_id,
                stage=stage,
                config=config.model_dump(mode="json"),
                approvals_needed=config.required_approvals,
                opened_at=gate.opened_at,
                deadline=deadline,
                resource_state=self.waiting_state,
                why=why,
            ),
        )
        gate.recorded = True
        auto = config.auto_approve and auto_approve_allowed
        # Histories from before Telegram have no answer here (None), so start nothing.
        if notifying and not auto and workflow.patched(TELEGRAM_NOTICES):
            within = timedelta(seconds=Notifying.model_validate(notifying).within_seconds)
            self._messages[gate.id] = Messages(within)
            self._messages[gate.id].sent = self._notice(
                gate.id,
                "notify.gate_opened",
                GateNotice(
                    gate_id=gate.id,
                    resource_kind=self.kind,
                    resource_id=info.workflow_id,
                    stage=stage,
                    why=why,
                    approvals_needed=config.required_approvals,
                    approvers=list(config.approvers),
                    deadline=deadline,
                    on_timeout=config.on_timeout,
                ),
            )
        if auto:
            await self._decide_alone(gate, DecisionIn(outcome="approve", by="auto", via="auto"))
        reminders = 0
        while gate.result is None:
            now = workflow.now()
            # Reminders stop after a bound, so a gate that waits long stays within history.
            remind = reminders < LIMITS.max_reminders
            waits = [
                (deadline - now).total_seconds() if deadline else None,
                config.reminder_every_seconds if remind else None,
            ]
            wait = min((w for w in waits if w is not None), default=None)
            try:
                await workflow.wait_condition(
                    lambda: gate.result is not None,
                    timeout=timedelta(seconds=max(wait, 0.001)) if wait is not None else None,
                )
            except TimeoutError:
                if deadline is not None and workflow.now() >= deadline:
                    await self._time_out(gate)
                else:
                    reminders += 1
                    await self.record(
                        "records.gate_reminder",
                        GateReminder(
                            gate_id=gate.id,
                            resource_kind=self.kind,
                            resource_id=info.workflow_id,
                            stage=stage,
                            approvals=list(gate.approvals),
                        ),
                    )
                    if gate.id in self._messages:
                        self._notice(
                            gate.id,
                            "notify.gate_reminder",
                            GateReminderNotice(
                                gate_id=gate.id,
                                resource_kind=self.kind,
                                resource_id=info.workflow_id,
                                stage=stage,
                                approvals=list(gate.approvals),
                                approvals_needed=config.required_approvals,
                            ),
                        )
        # Before decisions were carried, each record had to land before the workflow went on.
        await workflow.wait_condition(lambda: gate.recording == 0)
        assert gate.result is not None
        self._notice_closed(
            gate,
            GateClosedNotice(
                gate_id=gate.id,
                resource_kind=self.kind,
                resource_id=info.workflow_id,
                state=gate.result.state,
                by=gate.result.by,
                via=gate.result.via,
                reason=gate.result.reason,
                decided_at=workflow.now(),
            ),
        )
        del self._open[gate.id]
        self._closed[gate.id] = gate
        still = next(iter(self._open), "")
        workflow.upsert_search_attributes([attributes.GATE.value_set(still)])
        return gate.result

    async def _time_out(self, gate: GateState) -> None:
        action = gate.config.on_timeout
        reason = f"no decision within {gate.config.timeout_seconds:g} s"
        if action == "fail":
            gate.result = GateResult(
                gate_id=gate.id, state="failed", by="timer", via="timer", reason=reason
            )
            await self._keep(
                gate, DecisionIn(outcome="reject", by="timer", via="timer", reason=reason), None
            )
            return
        await self._decide_alone(
            gate,
            DecisionIn(
                outcome="approve" if action == "approve" else "reject",
                by="timer",
                via="timer",
                reason=reason,
            ),
        )

    async def _decide_alone(self, gate: GateState, d: DecisionIn) -> None:
        gate.settle(d)
        await self._keep(gate, d, None)
