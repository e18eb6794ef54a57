"""What a task definition is made of (`POST /api/v1/tasks` with `prompt_template`), how its
`{{var}}` placeholders are filled, and the checks on its schedule."""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from settings import LIMITS
from strict import Name, Strict, Text
from workflows.task_spec import PermissionMode, RepoUrl

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,99})\s*\}\}")
Overlap = Literal["skip", "buffer_one", "allow_all", "cancel_other", "terminate_other"]
# Temporal's cron shorthands; anything else must be five fields.
CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?LW#]{1,100}$")
Tool = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:*()\- ]{1,200}$")]
Variables = Annotated[dict[Name, Text], Field(max_length=100)]


def check_cron(cron: str) -> str:
    """Five fields of what cron fields hold, or a macro; Temporal checks the values when the
    schedule is created, and its refusal is a 422 too."""
    cron = cron.strip()
    if cron in CRON_MACROS or re.fullmatch(r"@every \d{1,6}[smh]", cron):
        return cron
    fields = cron.split()
    if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
        raise ValueError("a cron expression has five fields (minute hour day month weekday)")
    return cron


def check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}") from None
    return name


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL bytes are not allowed")
    return text


Cron = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(check_cron)]
TimeZone = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(check_timezone)]
Template = Annotated[
    str, Field(min_length=1, max_length=LIMITS.max_prompt_chars), AfterValidator(_no_nul)
]


def placeholders(template: str) -> list[str]:
    return sorted(set(PLACEHOLDER.findall(template)))


def missing(template: str, variables: dict[str, str]) -> list[str]:
    return [name for name in placeholders(template) if name not in variables]


def render(template: str, variables: dict[str, str]) -> str:
    """Each `{{name}}` replaced once: a value holding `{{x}}` is not rendered again."""
    return PLACEHOLDER.sub(lambda m: variables[m.group(1)], template)


class SdkOptions(Strict):
    """The agent options a definition or a session template sets."""

    allowed_tools: list[Tool] = Field(default_factory=list, max_length=100)
    permission_mode: PermissionMode | None = None
    max_turns: int | None = Field(None, ge=1, le=1000)
    model: Name | None = None
    timeout_seconds: int | None = Field(None, ge=1, le=int(LIMITS.max_duration_s))


class DefinitionPatch(Strict):
    """What a PATCH may change; an absent field stays as it is."""

    name: Name | None = None
    description: Text | None = None
    prompt_template: Template | None = None
    variables: Variables | None = Field(None, description="Defaults for `{{var}}`")
    allowed_tools: list[Tool] | None = Field(None, max_length=100)
    sdk_options: SdkOptions | None = None
    is_scheduled: bool | None = None
    schedule_cron: Cron | None = None
    timezone: TimeZone | None = None
    overlap_policy: Overlap | None = None
    generate_report: bool | None = None
    report_format: Literal["markdown"] | None = None


class DefinitionCreate(Strict):
    """A task definition: it runs when executed or when its schedule fires."""

    name: Name
    description: Text = ""
    prompt_template: Template
    variables: Variables = Field(
        default_factory=dict,
        description="Defaults for `{{var}}`; a schedule renders the template with them",
    )
    allowed_tools: list[Tool] = Field(default_factory=list, max_length=100)
    sdk_options: SdkOptions = Field(default_factory=SdkOptions)
    template_id: Name | None = Field(None, description="A session template to inherit from")
    repo_url: RepoUrl | None = Field(None, description="Else scratch")
    provider_key: Name | None = None
    is_scheduled: bool | None = Field(None, description="By default, whether a cron is given")
    schedule_cron: Cron | None = None
    timezone: TimeZone = "UTC"
    overlap_policy: Overlap = Field("skip", description="When a firing finds one still running")
    generate_report: bool = False
    report_format: Literal["markdown"] = "markdown"

    @model_validator(mode="after")
    def _runnable(self) -> DefinitionCreate:
        if self.is_scheduled is None:
            self.is_scheduled = self.schedule_cron is not None
        check_definition(self.model_dump())
        return self


def check_definition(fields: dict[str, Any]) -> None:
    """Never accept work that cannot run: a schedule needs a cron, and the template's
    variables must all have defaults, since a firing has no one to ask."""
    if fields.get("is_scheduled") and not fields.get("schedule_cron"):
        raise ValueError("schedule_cron: required when is_scheduled is true")
    if fields.get("is_scheduled"):
        gaps = missing(fields["prompt_template"], fields.get("variables") or {})
        if gaps:
            raise ValueError(
                f"variables.{gaps[0]}: missing; a scheduled template needs a default for it"
            )


class ExecuteBody(Strict):
    variables: Variables = Field(default_factory=dict, description="Over the defaults")
