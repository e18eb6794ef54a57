"""What a run is made of: the build system's `RunStartRequest` (run, tiers, phases), with
Pilothouse's own fields (builder, auditor, gate, max_attempts, risk; parallel tiers; a
workdir or repository). The API checks it at `POST /runs/start`; `RunWorkflow` checks it
again, so a run that reached Temporal another way ends failed rather than stuck.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from settings import LIMITS
from strict import JsonObject, Name, PathText, Strict, Text, check_json
from workflows.gate import GateConfig
from workflows.job_spec import ENV_NAME

RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"
# No git transport that runs commands (`ext::`), and nothing git could take for an option.
REPOSITORY = r"^(https?://|ssh://|git://|file://|git@[A-Za-z0-9.-]+:|/)[^\s]+$"
DEFAULT_TOKEN_CAP = 5_000_000
DEFAULT_MAX_PHASES = 25
DEFAULT_MAX_MINUTES = 120


class CommandExecutor(Strict):
    """Run a command in the run's workspace with the step executor."""

    executor: Literal["command"]
    run: list[Text] = Field(min_length=1, max_length=LIMITS.max_argv_items)
    env: dict[Annotated[str, Field(pattern=ENV_NAME)], Text] = Field(
        default_factory=dict, max_length=LIMITS.max_env_items
    )
    timeout_seconds: float | None = Field(None, gt=0, le=LIMITS.max_duration_s)


class ExternalExecutor(Strict):
    """Wait for an outside executor to post the result, for at most `timeout_seconds`."""

    executor: Literal["external"]
    timeout_seconds: float = Field(3600, gt=0, le=LIMITS.max_duration_s)


Executor = Annotated[CommandExecutor | ExternalExecutor, Field(discriminator="executor")]


class Risk(Strict):
    """A builder patch over `max_lines`, or touching a protected path, waits for a human."""

    max_lines: int = Field(200, ge=0, le=LIMITS.max_int)
    protected_paths: list[Text] = Field(
        default_factory=list, max_length=LIMITS.max_list_items, description="Glob patterns"
    )


class TierSpec(Strict):
    tier_id: Name
    tier_index: int = Field(ge=0, le=LIMITS.max_int)
    name: Name
    description: Text | None = None
    parallel: bool = Field(False, description="Run this tier's phases at the same time")


class PhaseSpec(Strict):
    phase_id: Name
    phase_index: int = Field(ge=0, le=LIMITS.max_int)
    tier_id: Name
    name: Name
    description: Text | None = None
    task_category: Name | None = None
    complexity: Name | None = Field(None, description="low, medium or high")
    builder_mode: Name | None = None
    scope: JsonObject | None = Field(None, description="`paths`, `read_only_context`")
    intention_refs: JsonObject | None = Field(None, description="Accepted, not used")
    builder: Executor = Field(
        default_factory=lambda: ExternalExecutor(executor="external"),
        description="Who builds: a command, or an outside executor posting `builder_result`",
    )
    auditor: Executor | None = Field(None, description="Who audits; none approves the build")
    gate: GateConfig | None = Field(None, description="A human gate after the audit")
    max_attempts: int = Field(3, ge=1, le=LIMITS.max_retries, description="Builds, with revise")
    risk: Risk = Field(default_factory=Risk)


class RunCreate(Strict):
    run_id: str = Field(pattern=RUN_ID)
    safety_profile: Name = Field("normal", description="normal or safety_critical")
    run_scope: Name = Field("multi_tier", description="multi_tier or single_tier")
    token_cap: int | None = Field(DEFAULT_TOKEN_CAP, ge=1, le=LIMITS.max_int)
    max_phases: int | None = Field(DEFAULT_MAX_PHASES, ge=1, le=LIMITS.max_stages)
    max_duration_minutes: int | None = Field(
        DEFAULT_MAX_MINUTES, ge=1, le=int(LIMITS.max_duration_s // 60)
    )
    workdir: PathText | None = Field(
        None,
        description="A git work tree to build in, as an absolute path on the worker's host;"
        " not one that holds Pilothouse's data directory",
    )
    repository: PathText | None = Field(
        None,
        pattern=REPOSITORY,
        description="Or a repository to clone: an https, ssh or git URL, or a local path",
    )

    @model_validator(mode="after")
    def _defaults(self) -> RunCreate:
        if self.workdir is not None and self.repository is not None:
            raise ValueError("give workdir or repository, not both")
        # An explicit null takes the server's default, as the build system does.
        self.token_cap = self.token_cap or DEFAULT_TOKEN_CAP
        self.max_phases = self.max_phases or DEFAULT_MAX_PHASES
        self.max_duration_minutes = self.max_duration_minutes or DEFAULT_MAX_MINUTES
        return self


class RunSpec(Strict):
    """`RunStartRequest`."""

    run: RunCreate
    tiers: list[TierSpec] = Field(default_factory=list, max_length=LIMITS.max_stages)
    phases: list[PhaseSpec] = Field(default_factory=list, max_length=LIMITS.max_stages)

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        tiers = [t.tier_id for t in self.tiers]
        if len(tiers) != len(set(tiers)):
            raise ValueError("tiers: tier_id values must be unique")
        phases = [p.phase_id for p in self.phases]
        if len(phases) != len(set(phases)):
            raise ValueError("phases: phase_id values must be unique")
        for n, phase in enumerate(self.phases):
            if phase.tier_id not in tiers:
                raise ValueError(f"phases.{n}.tier_id: no tier {phase.tier_id!r} in tiers")
        assert self.run.max_phases is not None
        if len(self.phases) > self.run.max_phases:
            raise ValueError(
                f"phases: {len(self.phases)} phases, more than run.max_phases "
                f"({self.run.max_phases})"
            )
        check_json(self.model_dump(mode="json"), LIMITS.max_spec_bytes)
        return self

    def in_order(self) -> list[tuple[TierSpec, list[PhaseSpec]]]:
        """Tiers by `tier_index`, each with its phases by `phase_index`."""
        return [
            (
                tier,
                sorted(
                    (p for p in self.phases if p.tier_id == tier.tier_id),
                    key=lambda p: p.phase_index,
                ),
            )
            for tier in sorted(self.tiers, key=lambda t: t.tier_index)
        ]
