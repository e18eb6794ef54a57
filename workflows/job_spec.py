"""What a job is: its stages and params as the API and the operator file take them, and
what JobWorkflow takes, answers and raises.

Apart from the workflow so that the workflow sandbox shares these models across runs
instead of building them again for each run (about 20 ms before a job's first stage).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from temporalio.exceptions import ApplicationError

from settings import LIMITS
from strict import Params, PathText, Strict, Text, check_json
from workflows.gate import GateConfig

STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,199}$"
JobState = Literal[
    "queued", "running", "needs_approval", "paused", "completed", "failed", "canceled"
]


class StageSpec(Strict):
    name: str = Field(pattern=STAGE_NAME, description="Unique in its job")
    run: list[Text] = Field(
        min_length=1,
        max_length=LIMITS.max_argv_items,
        description="The argv of the stage's command",
    )
    cwd: PathText | None = None
    env: dict[Annotated[str, Field(pattern=ENV_NAME)], Text] = Field(
        default_factory=dict, max_length=LIMITS.max_env_items
    )
    timeout_seconds: float | None = Field(None, gt=0, le=LIMITS.max_duration_s)
    retries: int = Field(
        0, ge=0, le=LIMITS.max_retries, description="Extra attempts after a failure"
    )
    gate: GateConfig | None = Field(None, description="The gate after this stage; none when absent")

    @field_validator("run")
    @classmethod
    def _program(cls, run: list[str]) -> list[str]:
        if not run[0]:
            raise ValueError("the program (the first item) is empty")
        return run

    @property
    def gated(self) -> bool:
        """Whether the job stops at a gate after this stage."""
        return self.gate is not None and self.gate.required


class JobSpec(Strict):
    """What a job runs. The API checks it at create; the workflow checks it again, so input
    that reached Temporal some other way ends the job `failed` rather than stuck."""

    stages: list[StageSpec] = Field(min_length=1, max_length=LIMITS.max_stages)
    params: Params = Field(default_factory=dict, description="Given to every stage")

    @model_validator(mode="after")
    def _fits(self) -> JobSpec:
        check_stages(self.stages)
        return self


def check_stages(stages: list[StageSpec]) -> None:
    """Stage names are unique, and all the stages together fit in a workflow's input."""
    names = [s.name for s in stages]
    if len(names) != len(set(names)):
        raise ValueError("stages: names must be unique")
    check_json([s.model_dump(mode="json") for s in stages], LIMITS.max_spec_bytes)


class JobPlace(BaseModel):
    """Where a job continued as new picks up: the next stage, the gates opened so far."""

    index: int
    openings: dict[str, int]


class JobInput(BaseModel):
    """Loosely typed on purpose: it always decodes, and `JobSpec` checks it in the workflow."""

    job_id: str
    stages: list[dict[str, Any]]
    params: dict[str, Any] = Field(default_factory=dict)
    auto_approve_allowed: bool = True
    heartbeat_timeout_seconds: float = 5
    kill_grace_seconds: float = 15
    place: JobPlace | None = None


class JobOutcome(BaseModel):
    state: JobState
    stage: str | None
    error: str | None = None


class ResumeIn(BaseModel):
    by: str
    params: dict[str, Any] | None = Field(None, description="The params to run with from now on")


class ResumeOut(BaseModel):
    state: JobState
    stage: str | None


class JobFailed(ApplicationError):
    """A job that ended `failed`, already recorded; the type says why."""


def step_env(stage: StageSpec, params: dict[str, Any]) -> dict[str, str]:
    env = {"PILOTHOUSE_PARAMS": json.dumps(params, sort_keys=True), "PILOTHOUSE_STAGE": stage.name}
    for key, value in params.items():
        if isinstance(value, str | int | float | bool) and re.match(ENV_NAME, key):
            env[f"PARAM_{key.upper()}"] = str(value)
    return env | stage.env
