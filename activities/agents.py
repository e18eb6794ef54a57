"""The agent adapter: one run of an agent command in a workspace, on the step executor.

The command is a template (Claude Code headless by default) whose placeholders each fill
one argument. Its stream-json output becomes events of the resource as the lines arrive
(`agent.system`, `agent.assistant`, `agent.user`, `agent.result`, and `agent.output` for a
line that is not JSON: activities/agent_lines.py); its `result` line becomes the usage,
cost, turns and the latest session id a follow-up resumes. The executor gives it a process
group, heartbeats, the timeout, a watchdog for silence, the kill on cancel and the raw log
as an artifact.

How the agent did is the returned `outcome`: only a cancel, and a command template that
cannot be rendered (`AgentCommandInvalid`, not retried), raise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.agent_lines import AgentStream, number
from activities.records import CarriesDecisions
from activities.step_records import StepInput
from activities.steps import NOT_STARTABLE, Executed, Steps, Streaming, stage_slug
from activities.work_trees import Diff
from settings import Settings
from store.engine import Database
from store.mcp import mcp_config

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
RESULT_CHARS = 16 * 1024


SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class AgentRunIn(CarriesDecisions):
    resource_kind: str
    resource_id: str
    stage: str = Field(description='The iteration, e.g. "iteration-2"')
    cwd: str = Field(description="The workspace")
    prompt: str = Field(min_length=1)
    model: str | None = Field(None, description="None: settings.agent_model")
    max_turns: int = Field(20, ge=1)
    permission_mode: str | None = Field(None, description="None: settings.agent_permission_mode")
    resume_session_id: str | None = Field(None, description="Adds --resume ID")
    mcp_config: dict[str, Any] | None = Field(
        None, description='{"mcpServers": {...}}, passed as a file with --mcp-config'
    )
    registered_mcp: bool = Field(
        False, description="Also give the agent the enabled servers of /api/v1/mcp/servers"
    )
    command: str | None = Field(None, description="The template; None: settings.agent_command")
    timeout_seconds: float = Field(gt=0, description="Bounds the whole run")
    idle_timeout_seconds: float | None = Field(None, gt=0)
    kill_grace_seconds: float | None = Field(None, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    resource_state: str = "running"
    parts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    diff: bool = True
    allowed_tools: list[str] = Field(default_factory=list, description="Adds --allowedTools")


class AgentUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    total_cost_usd: float = 0.0
    num_turns: int = 0
    duration_ms: int = 0


class AgentRunOut(BaseModel):
    outcome: Literal["succeeded", "failed", "timed_out", "idle"]
    exit_code: int
    subtype: str | None
    is_error: bool
    result: str | None
    session_id: str | None = Field(description="The latest seen (init or result line)")
    usage: AgentUsage
    error: str | None
    artifact_id: str
    tail: list[str]
    diff: Diff | None


def render(template: str, values: dict[str, str]) -> list[str]:
    """Split the template like a shell line, then fill each {placeholder} inside its one
    argument: a value never splits, and nothing in it is interpreted."""

    def fill(match: re.Match[str]) -> str:
        if match[1] not in values:
            raise ValueError(f"unknown placeholder {{{match[1]}}} in the agent command")
        return values[match[1]]

    argv = [PLACEHOLDER.sub(fill, item) for item in shlex.split(template)]
    if not argv:
        raise ValueError("the agent command is empty")
    return argv


class Agents:
    """Bound to the worker's database and settings; runs on its step executor."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.steps = Steps(db, settings.artifacts_dir)

    @activity.defn(name="agents.run")
    async def run(self, a: AgentRunIn) -> AgentRunOut:
        s = self.settings
        # A prompt is text, never an option: "--dangerously-skip-permissions" as a prompt
        # would be read as a flag by the CLI. A leading space keeps it an argument.
        prompt = f" {a.prompt}" if a.prompt.startswith("-") else a.prompt
        values = {
            "prompt": prompt,
            "max_turns": str(a.max_turns),
            "model": a.model or s.agent_model,
            "mode": a.permission_mode or s.agent_permission_mode,
        }
        try:
            argv = render(a.command or s.agent_command, values)
            # The prompt may be long or private: the workflow records it, the log does not.
            shown = render(a.command or s.agent_command, values | {"prompt": redacted(a.prompt)})
        except ValueError as exc:
            raise ApplicationError(
                str(exc), type="AgentCommandInvalid", non_retryable=True
            ) from exc
        # The id comes from the agent's own output: only one that cannot pass for a flag.
        resume = a.resume_session_id
        extra = ["--resume", resume] if resume and SESSION_ID.fullmatch(resume) else []
        if a.allowed_tools:
            extra += ["--allowedTools", ",".join(a.allowed_tools)]
        # Beside the resource's logs, hidden (not an artifact): it may hold servers' secrets.
        mcp = s.artifacts_dir / a.resource_id / f".{stage_slug(a.stage)}.mcp.json"
        config = a.mcp_config
        if a.registered_mcp:
            async with self.db.session() as session:
                registered = await mcp_config(session)
            if registered is not None:
                servers = registered["mcpServers"] | (config or {}).get("mcpServers", {})
                config = (config or {}) | {"mcpServers": servers}
        if config is not None:
            await asyncio.to_thread(write_private, mcp, json.dumps(config))
            extra += ["--mcp-config", str(mcp)]
        idle = a.idle_timeout_seconds or s.agent_idle_timeout_seconds
        grace = s.agent_kill_grace_seconds if a.kill_grace_seconds is None else a.kill_grace_seconds
        step = StepInput(
            decisions=a.decisions,
            facts=a.facts,
            resource_kind=a.resource_kind,
            resource_id=a.resource_id,
            stage=a.stage,
            argv=argv + extra,
            cwd=a.cwd,
            env=a.env,
            timeout_seconds=a.timeout_seconds,
            kill_grace_seconds=grace,
            diff=a.diff,
            resource_state=a.resource_state,
            parts=a.parts,
        )
        stream = AgentStream(self.db, a.resource_kind, a.resource_id, a.stage)
        try:
            done = await self.steps.execute(
                step, shown_argv=shown + extra, streaming=Streaming(stream, idle)
            )
        finally:
            await asyncio.to_thread(mcp.unlink, True)
        return outcome_of(stream, done, a.timeout_seconds, idle)


def outcome_of(stream: AgentStream, done: Executed, timeout: float, idle: float) -> AgentRunOut:
    """How the agent did, from the lines it printed and how its command ended."""
    r = stream.result or {}
    step = done.result
    subtype = r.get("subtype") if isinstance(r.get("subtype"), str) else None
    is_error = bool(r.get("is_error"))
    outcome: Literal["succeeded", "failed", "timed_out", "idle"] = "failed"
    error: str | None
    if done.outcome == "timed_out":
        outcome, error = "timed_out", f"the agent ran past {timeout:g} s and was stopped"
    elif done.outcome == "idle":
        outcome, error = "idle", f"the agent printed nothing for {idle:g} s and was stopped"
    elif step.exit_code != 0:
        error = f"the agent exited with status {step.exit_code}"
    elif not r:
        error = "the agent ended without a result line"
    elif is_error or subtype != "success":
        error = f"the agent's result is an error ({subtype})"
    else:
        outcome, error = "succeeded", None
    if error is not None:
        if subtype and subtype not in error:
            error += f" ({subtype})"
        last = stream.last_stderr
        if last is None and step.exit_code == NOT_STARTABLE and step.tail:
            last = step.tail[-1]  # the executor's own words: it could not start
        if last:
            error += f": {last}"
    usage: dict[str, Any] = r["usage"] if isinstance(r.get("usage"), dict) else {}
    return AgentRunOut(
        outcome=outcome,
        exit_code=step.exit_code,
        subtype=subtype,
        is_error=is_error,
        result=r["result"][:RESULT_CHARS] if isinstance(r.get("result"), str) else None,
        session_id=stream.session_id,
        usage=AgentUsage(
            input_tokens=int(number(usage, "input_tokens")),
            output_tokens=int(number(usage, "output_tokens")),
            cache_creation_input_tokens=int(number(usage, "cache_creation_input_tokens")),
            cache_read_input_tokens=int(number(usage, "cache_read_input_tokens")),
            total_cost_usd=number(r, "total_cost_usd"),
            num_turns=int(number(r, "num_turns")),
            duration_ms=int(number(r, "duration_ms")) if "duration_ms" in r else step.duration_ms,
        ),
        error=error,
        artifact_id=step.artifact_id,
        tail=step.tail,
        diff=step.diff,
    )


def redacted(prompt: str) -> str:
    return f"<prompt: {len(prompt)} chars>"


def write_private(path: Path, text: str) -> None:
    """A file only the worker's user can read (blocking: run it in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
