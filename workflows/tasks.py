"""TaskWorkflow: a coding agent on a clone of a repository, one instruction at a time.

pending → cloning → running → completed ⇄ (instruct) running …; `create-pr` goes
creating_pr → pr_created, through a human gate when the task has one (a rejection leaves it
awaiting_instruction). A task with a pull request still takes instructions, and a later
`create-pr` pushes the same branch again. failed and canceled end it; a task idle for its
TTL, or whose workspace is deleted, finishes and lets its workspace go.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, NoReturn

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentRunIn, AgentRunOut
    from activities.execution_records import ExecutionRecord, ReportIn
    from activities.github import PullRequest, PullRequestIn
    from activities.records import CarriesDecisions, Transition
    from activities.webhooks import WebhookIn
    from activities.workspaces import Clone, CloneIn, Published, PublishIn, ScratchIn, WorkspaceRef
    from strict import explain
    from workflows.gate import RECORD_RETRY, RECORD_TIMEOUT, WORKER_LOSSES, cause, refuse
    from workflows.iterations import Instruction, IterationLoop
    from workflows.task_spec import (
        TAKES_INSTRUCTIONS,
        PullRequestAnswer,
        PullRequestAsk,
        ReleaseIn,
        TaskConfig,
        TaskInput,
        TaskPlace,
    )

PR_STAGE = "pull-request"
# A pull request comes from work done since the last one: not straight from `pr_created`.
PR_FROM = frozenset({"completed", "awaiting_instruction"})
GIT_TIMEOUT = timedelta(minutes=30)
GIT_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


class TaskFailed(ApplicationError):
    """A task that ended `failed`, already recorded; the type says why."""


@workflow.defn(name="TaskWorkflow")
class TaskWorkflow(IterationLoop):
    kind = "task"
    waiting_state = "creating_pr"
    accepting = TAKES_INSTRUCTIONS
    not_accepting_code = "TASK_NOT_AWAITING"

    @workflow.init
    def __init__(self, task: TaskInput) -> None:
        super().__init__()
        if task.trigger == "schedule" and task.place is None:
            # A schedule's action is fixed when the schedule is made: the execution's id is
            # the workflow id the schedule gives it (`<action id>-<time>`).
            info = workflow.info()
            task = task.model_copy(
                update={"task_id": info.workflow_id, "trace_id": info.run_id.replace("-", "")}
            )
        self.task = task
        self.config = TaskConfig()
        self.workspace = ""
        self.branch = ""
        self.base_branch = ""
        self.agent_session_id: str | None = None
        self.totals: dict[str, Any] = {}
        self.pr_openings = 0
        self._pr: PullRequestAsk | None = None
        self._pr_answer: PullRequestAnswer | None = None
        self._pr_error: tuple[str, str] | None = None
        self._release: str | None = None
        self._released = False
        self._webhooks: list[asyncio.Task[Any]] = []
        self._ended = False
        self.last_result: str | None = None

    @workflow.run
    async def run(self, task: TaskInput) -> str:
        try:
            await self._run(self.task)
        except asyncio.CancelledError:
            await self._canceled()
            raise
        except Exception as err:
            if is_cancelled_exception(err):
                await self._canceled()
                raise
            if self._ended or isinstance(err, workflow.NondeterminismError):
                raise
            await self._fail(f"internal error: {type(err).__name__}: {err}", "InternalError")
        await self._settle()
        return self.state

    # --- the life of a task --------------------------------------------------------------

    async def _run(self, task: TaskInput) -> None:
        try:
            self.config = TaskConfig.model_validate(task.config)
        except ValidationError as exc:
            await self._fail(f"invalid task: {explain(exc)}", "InvalidTask")
        if task.place is None:
            if task.trigger == "schedule":
                await self._record_execution(task)
            await self._open_workspace(task)
            await self.enqueue(task.prompt, task.owner)
        else:
            self._restore(task.place)
        while True:
            if workflow.info().is_continue_as_new_suggested() and self.state in self.accepting:
                await self._continue_as_new(task)
            work = await self.next_work(
                task.idle_ttl_seconds, lambda: self._pr is not None or self._release is not None
            )
            if work == "idle":
                await self._finish("idle_ttl", f"idle for {task.idle_ttl_seconds:g} s")
                return
            if isinstance(work, Instruction):
                await self._iterate(task, work)
                if task.one_shot:
                    self.closing = True
                    await self._report(task)
                    await self._finish("execution", "the execution is done")
                    return
            elif self._release is not None:
                await self._finish(self._release, "workspace deleted")
                return
            else:
                await self._pull_request(task)

    async def _open_workspace(self, task: TaskInput) -> None:
        self._set_state("cloning")
        await self._transition("git.cloning", f"cloning {task.repo_url or 'a scratch workspace'}")
        branch = f"pilothouse/{workspace_name(task.task_id)}"
        try:
            if task.repo_url:
                clone: Clone = await workflow.execute_activity(
                    "workspaces.clone",
                    CloneIn(
                        owner_id=workspace_name(task.task_id),
                        repo_url=task.repo_url,
                        credential=task.credential,
                        target_branch=self.config.target_branch,
                        branch=branch,
                    ),
                    result_type=Clone,
                    start_to_close_timeout=GIT_TIMEOUT,
                    retry_policy=GIT_RETRY,
                )
            else:
                clone = await workflow.execute_activity(
                    "workspaces.scratch",
                    ScratchIn(owner_id=workspace_name(task.task_id)),
                    result_type=Clone,
                    start_to_close_timeout=GIT_TIMEOUT,
                    retry_policy=GIT_RETRY,
                )
        except ActivityError as err:
            await self._fail(f"clone failed: {cause(err)}", "CloneFailed")
        self.workspace, self.branch, self.base_branch = clone.path, clone.branch, clone.base_branch
        self.defer(
            self._fact(
                "git.cloned",
                f"on branch {clone.branch} from {clone.base_branch} at {clone.base_commit[:12]}",
                payload={
                    "branch": clone.branch,
                    "base_branch": clone.base_branch,
                    "base_commit": clone.base_commit,
                },
                changes={"workspace": clone.path, "branch": clone.branch},
            )
        )

    async def accepted(self, item: Instruction) -> None:
        n = item.number
        self._set_state("running", f"iteration-{n}")
        now = workflow.now().isoformat()
        await self._transition(
            "system.iteration_started",
            f"iteration {n} by {item.by}",
            payload={"iteration": n, "by": item.by, "prompt": item.prompt[:500]},
            adds={f"iteration:{n}": {"prompt": item.prompt, "started_at": now}},
            changes={"iterations": n, **({"started_at": now} if n == 1 else {})},
        )

    async def _iterate(self, task: TaskInput, item: Instruction) -> None:
        n = item.number
        stage = f"iteration-{n}"
        config = self.config
        try:
            out: AgentRunOut = await self.carrying(
                "agents.run",
                AgentRunIn(
                    resource_kind=self.kind,
                    resource_id=task.task_id,
                    stage=stage,
                    cwd=self.workspace,
                    prompt=item.prompt,
                    model=config.ai_model,
                    max_turns=config.max_turns,
                    permission_mode=config.permission_mode,
                    resume_session_id=self.agent_session_id,
                    registered_mcp=True,
                    timeout_seconds=config.timeout_seconds,
                    idle_timeout_seconds=config.idle_timeout_seconds,
                    resource_state="running",
                    allowed_tools=task.allowed_tools,
                ),
                result_type=AgentRunOut,
                start_to_close_timeout=timedelta(seconds=config.timeout_seconds + 120),
                heartbeat_timeout=timedelta(seconds=task.heartbeat_timeout_seconds),
                # A failing agent is an outcome, not an error; these attempts are for
                # workers lost mid-iteration: it runs again in the same workspace.
                retry_policy=RetryPolicy(
                    maximum_attempts=1 + WORKER_LOSSES, initial_interval=timedelta(seconds=1)
                ),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            error = f"{stage}: {cause(err)}"
            await self._iteration_failed(task, n, error, None)
        if out.session_id:
            self.agent_session_id = out.session_id
        self.last_result = out.result
        changes = changes_summary(out)
        usage = out.usage.model_dump()
        self._add_totals(changes, usage)
        if out.outcome != "succeeded" or out.is_error:
            await self._iteration_failed(task, n, f"{stage}: {out.error or out.outcome}", out)
        part = {
            "state": "completed",
            "result": out.result,
            "usage": usage,
            "changes": changes,
            "agent_session_id": out.session_id,
            "finished_at": workflow.now().isoformat(),
        }
        self._set_state("completed", None)
        await self._transition(
            "result.completed",
            f"iteration {n} completed: {changes['files_changed']} files changed",
            payload={"iteration": n, "result": (out.result or "")[:2000], "usage": usage},
            changes=self._row(out),
            parts={f"iteration:{n}": part},
        )
        self._notify(task, "completed", out.result, changes, usage)

    async def _iteration_failed(
        self, task: TaskInput, n: int, error: str, out: AgentRunOut | None
    ) -> NoReturn:
        parts = {
            f"iteration:{n}": {
                "state": "failed",
                "error": error,
                "result": out.result if out else None,
                "usage": out.usage.model_dump() if out else {},
                "finished_at": workflow.now().isoformat(),
            }
        }
        await self._fail(error, "IterationFailed", parts=parts, out=out)

    async def _pull_request(self, task: TaskInput) -> None:
        """Publish and open the pull request. The task takes instructions after it, as a
        review asks for changes: a later pull request pushes the same branch again."""
        ask = self._pr
        assert ask is not None
        self._set_state("creating_pr")
        base = ask.target_branch or self.config.target_branch or self.base_branch
        gate = self.config.pr_gate
        if gate is not None and gate.required:
            result = await self.run_gate(
                PR_STAGE,
                gate,
                self.pr_openings,
                task.auto_approve_allowed,
                why=f"pull request {ask.title!r} into {base}: {describe(self.totals)}",
            )
            if result.state != "approved":
                self._pr = None
                reason = result.reason or result.state
                self._set_state("awaiting_instruction")
                await self._transition(
                    "system.pr_rejected",
                    f"pull request not approved: {reason}",
                    payload={"gate_id": result.gate_id, "by": result.by, "reason": reason},
                    error=f"pull request not approved: {reason}",
                )
                return
        await self._transition("git.pushing", f"pushing {self.branch}")
        try:
            published: Published = await workflow.execute_activity(
                "workspaces.publish",
                PublishIn(
                    owner_id=workspace_name(task.task_id),
                    repo_url=task.repo_url or "",
                    credential=task.credential,
                    branch=self.branch,
                    message=ask.title,
                ),
                result_type=Published,
                start_to_close_timeout=GIT_TIMEOUT,
                retry_policy=GIT_RETRY,
            )
            if not published.pushed:
                raise ApplicationError(
                    "nothing to push: no change since the branch was made", type="NO_CHANGES"
                )
            pr: PullRequest = await workflow.execute_activity(
                "github.open_pull_request",
                PullRequestIn(
                    repo_url=task.repo_url or "",
                    credential=task.credential,
                    head=self.branch,
                    base=base,
                    title=ask.title,
                    body=ask.description,
                ),
                result_type=PullRequest,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=1)),
            )
        except (ActivityError, ApplicationError) as err:
            if is_cancelled_exception(err):
                raise
            why = cause(err) if isinstance(err, ActivityError) else err.message
            code = err.type if isinstance(err, ApplicationError) else None
            self._pr_error = (code or "PULL_REQUEST_FAILED", f"pull request failed: {why}")
            self._pr = None
            self._set_state("awaiting_instruction")
            await self._transition(
                "system.pr_failed", self._pr_error[1], error=self._pr_error[1], payload={}
            )
            return
        self._pr_answer = PullRequestAnswer(
            status="pr_created", branch=self.branch, pr_url=pr.pr_url, pr_number=pr.pr_number
        )
        self._pr = None
        self._set_state("pr_created")
        await self._transition(
            "git.pr_created",
            f"pull request #{pr.pr_number} opened: {pr.pr_url}",
            payload={"pr_url": pr.pr_url, "pr_number": pr.pr_number, "commit": published.commit},
            changes={"pr_url": pr.pr_url, "pr_number": pr.pr_number},
        )
        self._notify(task, "pr_created", f"pull request #{pr.pr_number}: {pr.pr_url}", None, None)

    async def _record_execution(self, task: TaskInput) -> None:
        assert task.definition_id is not None
        await workflow.execute_activity(
            "records.execution",
            ExecutionRecord(
                task_id=task.task_id,
                definition_id=task.definition_id,
                owner=task.owner,
                prompt=task.prompt,
                repo_url=task.repo_url,
                key_name=task.credential.id if task.credential else None,
                config=task.config,
                trace_id=task.trace_id,
                trigger="schedule",
                started_at=workflow.now(),
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
        )

    async def _report(self, task: TaskInput) -> None:
        """With `generate_report`, the execution's result as a markdown artifact."""
        if not task.generate_report:
            return
        await workflow.execute_activity(
            "records.report",
            ReportIn(
                task_id=task.task_id,
                definition_name=task.definition_name or task.definition_id or task.task_id,
                prompt=task.prompt,
                result=self.last_result,
                usage=dict(self.totals.get("usage", {})),
                finished_at=workflow.now(),
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
        )

    async def _finish(self, by: str, why: str) -> None:
        """An idle or released task lets its workspace go and ends where it stood."""
        await workflow.execute_activity(
            "workspaces.delete",
            WorkspaceRef(owner_id=workspace_name(self.task.task_id)),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=GIT_RETRY,
        )
        await self._transition(
            "system.released",
            f"workspace released ({why})",
            payload={"by": by, "why": why},
            changes={"workspace": None},
            final=True,
        )
        self._released = True

    # --- Updates -------------------------------------------------------------------------

    @workflow.update
    async def create_pr(self, ask: PullRequestAsk) -> PullRequestAnswer:
        self._check_pr()
        self._pr, self._pr_answer, self._pr_error = ask, None, None
        self.state = "creating_pr"
        gate = self.config.pr_gate
        if gate is not None and gate.required:
            self.pr_openings += 1
            gate_id = f"{workflow.info().workflow_id}:{PR_STAGE}:{self.pr_openings}"
            # Answer once the gate is on record, so the caller can decide it by its id.
            await workflow.wait_condition(lambda: self.gate_recorded(gate_id) or self._pr is None)
            return PullRequestAnswer(
                status="awaiting_approval", branch=self.branch, gate_id=gate_id
            )
        await workflow.wait_condition(lambda: self._pr_answer is not None or self._pr is None)
        if self._pr_answer is None:
            code, message = self._pr_error or ("PULL_REQUEST_FAILED", "the pull request failed")
            raise refuse(code, message)
        return self._pr_answer

    @create_pr.validator
    def _validate_create_pr(self, ask: PullRequestAsk) -> None:
        self._check_pr()

    def _check_pr(self) -> None:
        ready = self.state in PR_FROM and self._pr is None and not self.closing
        if not ready or not self.task.repo_url:
            what = "has no repository" if not self.task.repo_url else f"is {self.state}"
            raise refuse("TASK_NOT_READY", f"the task {what}; a pull request needs it completed")

    @workflow.update
    async def release(self, request: ReleaseIn) -> str:
        """Let the workspace go and finish; answered once it is gone."""
        self._check_release()
        self._release, self.closing = request.by, True
        await workflow.wait_condition(lambda: self._released)
        return self.state

    @release.validator
    def _validate_release(self, request: ReleaseIn) -> None:
        self._check_release()

    def _check_release(self) -> None:
        if self.closing:
            raise refuse("TASK_RUNNING", "the task is already finishing")
        if self.state not in self.accepting or self._pr is not None:
            raise refuse("TASK_RUNNING", f"the task is {self.state}; its workspace is in use")

    @workflow.query
    def status(self) -> str:
        return self.state

    # --- recording ---------------------------------------------------------------------------

    def _set_state(self, state: str, stage: str | None = None) -> None:
        self.state = state
        self.show_state(state)
        workflow.set_current_details(
            f"**State** {state}\n\n**Branch** {self.branch or '-'}\n\n"
            f"**Iterations** {self.iterations}" + (f"\n\n**Running** {stage}" if stage else "")
        )

    def _fact(self, event_type: str, message: str, **fields: Any) -> Transition:
        payload = {"status": self.state, **fields.pop("payload", {})}
        return Transition(
            resource_kind=self.kind,
            resource_id=workflow.info().workflow_id,
            state=self.state,
            event_type=event_type,
            message=message,
            payload=payload,
            **fields,
        )

    async def _transition(self, event_type: str, message: str, **fields: Any) -> None:
        await self.record("records.transition", self._fact(event_type, message, **fields))

    def _row(self, out: AgentRunOut) -> dict[str, Any]:
        return {
            "result": out.result,
            "agent_session_id": self.agent_session_id,
            "usage": dict(self.totals.get("usage", {})),
            "changes": dict(self.totals.get("changes", {})),
        }

    def _add_totals(self, changes: dict[str, int], usage: dict[str, Any]) -> None:
        for group, values in (("changes", changes), ("usage", usage)):
            total = self.totals.setdefault(group, {})
            for name, value in values.items():
                if isinstance(value, int | float):
                    total[name] = total.get(name, 0) + value

    def _notify(
        self,
        task: TaskInput,
        status: str,
        result: str | None,
        changes: dict[str, int] | None,
        usage: dict[str, Any] | None,
    ) -> None:
        """Tell the caller's service, without waiting: a receiver that hangs holds nothing."""
        if not task.callback_url:
            return
        usage = usage or self.totals.get("usage", {})
        body = {
            "task_id": task.task_id,
            "status": status,
            "result": result,
            "changes_summary": changes or self.totals.get("changes", changes_summary(None)),
            "usage": {
                "input_tokens": usage.get("input_tokens", 0),
                "output_tokens": usage.get("output_tokens", 0),
                "duration_seconds": round(usage.get("duration_ms", 0) / 1000, 3),
            },
            "trace_id": task.trace_id,
            "finished_at": workflow.now().isoformat().replace("+00:00", "Z"),
        }
        delivery = WebhookIn(
            resource_kind=self.kind,
            resource_id=task.task_id,
            url=task.callback_url,
            event=f"task.{status}",
            body=body,
            trace_id=task.trace_id,
            backoff_seconds=task.webhook_backoff_seconds,
        )
        longest = delivery.longest_seconds(task.webhook_timeout_seconds)
        self._webhooks.append(
            workflow.start_activity(
                "webhooks.deliver",
                delivery,
                start_to_close_timeout=timedelta(seconds=longest + 60),
                heartbeat_timeout=timedelta(seconds=task.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(maximum_attempts=1 + WORKER_LOSSES),
            )
        )

    async def _settle(self) -> None:
        """Before the workflow ends: webhooks delivered (or given up), Updates answered."""
        if self._webhooks:
            await asyncio.gather(*self._webhooks, return_exceptions=True)
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _canceled(self) -> None:
        self._set_state("canceled")
        await self._transition("system.canceled", "task canceled", final=True)

    async def _fail(
        self,
        error: str,
        kind: str,
        parts: dict[str, dict[str, Any]] | None = None,
        out: AgentRunOut | None = None,
    ) -> NoReturn:
        """Record the task failed, tell the caller, then end the workflow failed."""
        self._set_state("failed")
        await self._transition(
            "system.failed",
            error,
            payload={"error": error},
            error=error,
            parts=parts or {},
            changes=self._row(out) if out else {},
            final=True,
        )
        self._notify(self.task, "failed", error, None, None)
        self._ended = True
        await self._settle()
        raise TaskFailed(error, type=kind, non_retryable=True)

    # --- continue-as-new ---------------------------------------------------------------------

    async def _continue_as_new(self, task: TaskInput) -> None:
        """Go on in a new run, carrying the loop's place: no Update is taken from here on
        (it would be lost with this run), and those in flight finish first."""
        self.closing = True
        await self._settle()
        await self.notices_done()
        if self._unrecorded or self._deferred:
            await self.record("records.decisions", CarriesDecisions())
        await workflow.wait_condition(workflow.all_handlers_finished)
        place = TaskPlace(
            loop=self.place(),
            workspace=self.workspace,
            branch=self.branch,
            base_branch=self.base_branch,
            agent_session_id=self.agent_session_id,
            totals=self.totals,
            pr_openings=self.pr_openings,
        )
        workflow.continue_as_new(task.model_copy(update={"place": place}))

    def _restore(self, place: TaskPlace) -> None:
        self.restore(place.loop)
        self.workspace, self.branch = place.workspace, place.branch
        self.base_branch, self.agent_session_id = place.base_branch, place.agent_session_id
        self.totals, self.pr_openings = dict(place.totals), place.pr_openings


def changes_summary(out: AgentRunOut | None) -> dict[str, int]:
    diff = out.diff if out else None
    if diff is None:
        return {"files_changed": 0, "insertions": 0, "deletions": 0}
    return {
        "files_changed": len(diff.files_changed),
        "insertions": diff.lines_added,
        "deletions": diff.lines_removed,
    }


def describe(totals: dict[str, Any]) -> str:
    c = totals.get("changes", {})
    return (
        f"{c.get('files_changed', 0)} files changed, "
        f"+{c.get('insertions', 0)} -{c.get('deletions', 0)}"
    )


def workspace_name(task_id: str) -> str:
    """A scheduled execution's id ends in its fire time (`…-exec-2026-11-24T09:00:00Z`);
    neither a workspace directory nor a git branch takes its colons. Other ids pass as
    they are."""
    return task_id.replace(":", "")
