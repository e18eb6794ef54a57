"""The operator file (YAML): named pipelines and the gate of each stage.

Its shape follows the operator console's `conf/operator.yaml` (server, security, gates per
stage), plus `pipelines`, which name stage lists. Unknown sections and fields are refused,
each naming the nearest known one, as the API refuses them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from settings import LIMITS
from strict import Name, Strict, Text
from workflows.gate import GateConfig
from workflows.job_spec import StageSpec, check_stages

SECRET_KEY = re.compile(r"token|secret|password|passwd|api_key|apikey|private", re.IGNORECASE)
REDACTED = "***"


class ConfigProblem(BaseModel):
    path: str
    message: str


class Pipeline(Strict):
    description: Text = ""
    stages: list[StageSpec] = Field(min_length=1, max_length=LIMITS.max_stages)

    @model_validator(mode="after")
    def _fits(self) -> Pipeline:
        check_stages(self.stages)
        return self


Section = dict[str, Any]


class OperatorConfig(Strict):
    """The file's sections. `server`, `security`, `storage`, `pipeline` and `ui` are the
    operator console's, read and shown but not used; any other section is an error."""

    server: Section = Field(default_factory=dict)
    security: Section = Field(default_factory=dict)
    storage: Section = Field(default_factory=dict)
    pipeline: Section = Field(default_factory=dict)
    ui: Section = Field(default_factory=dict)
    gates: dict[Name, GateConfig] = Field(default_factory=dict, max_length=LIMITS.max_stages)
    pipelines: dict[Name, Pipeline] = Field(default_factory=dict, max_length=LIMITS.max_pipelines)

    def stages_for(self, stages: list[StageSpec]) -> list[StageSpec]:
        """Stages with their gate: the stage's own, else the operator file's for its name."""
        return [
            s
            if s.gate is not None or s.name not in self.gates
            else s.model_copy(update={"gate": self.gates[s.name]})
            for s in stages
        ]

    def warnings(self) -> list[ConfigProblem]:
        """What is valid but probably not meant: a gate for a stage no pipeline has."""
        staged = {s.name for p in self.pipelines.values() for s in p.stages}
        return [
            ConfigProblem(
                path=f"gates.{name}",
                message=f"no pipeline has a stage {name!r}; the gate applies only to jobs "
                "that name such a stage themselves",
            )
            for name in self.gates
            if name not in staged
        ]


def validate(document: Any) -> tuple[OperatorConfig | None, list[ConfigProblem]]:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        return None, [ConfigProblem(path="", message="the operator file must be a mapping")]
    try:
        return OperatorConfig.model_validate(document), []
    except ValidationError as exc:
        return None, [
            ConfigProblem(
                path=".".join(str(p) for p in e["loc"]),
                message=e["msg"].removeprefix("Value error, "),
            )
            for e in exc.errors()
        ]


def parse(text: str) -> tuple[OperatorConfig | None, list[ConfigProblem]]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        return None, [ConfigProblem(path=where, message=f"not valid YAML: {exc}")]
    return validate(document)


def load(path: Path | None) -> OperatorConfig:
    """The operator file's config; an empty one when no file is set. Raises on a bad file."""
    if path is None:
        return OperatorConfig()
    config, problems = parse(path.read_text())
    if config is None:
        listed = "; ".join(f"{p.path or '<root>'}: {p.message}" for p in problems)
        raise ValueError(f"operator file {path}: {listed}")
    return config


def redact(value: Any) -> Any:
    """The document with every secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
