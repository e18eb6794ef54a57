"""What an outside executor posts about a phase: the build system's `BuilderResult`,
`AuditorResult`, `PhaseStatusUpdate` and `record_issue`. Each reaches `RunWorkflow` as an
Update, so the caller learns at once whether the phase took it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from settings import LIMITS
from strict import Name, Strict, Text

PhaseState = Literal["QUEUED", "EXECUTING", "GATE", "CI_RUNNING", "COMPLETE", "FAILED", "SKIPPED"]
Recommendation = Literal["approve", "revise", "escalate"]
Severity = Literal["minor", "major"]
Source = Literal["test", "probe", "ci", "static_check", "cursor_self_doubt", "api_server"]
Count = Field(0, ge=0, le=LIMITS.max_int)


class ProbeResult(Strict):
    probe_type: Name
    exit_code: int = Field(ge=-(2**31), le=2**31)
    stdout: Text = ""
    stderr: Text = ""
    duration_seconds: float = Field(0.0, ge=0, le=LIMITS.max_duration_s)


class IssueFound(Strict):
    issue_key: Name
    severity: Literal["minor", "major"]
    source: Name = "cursor_self_doubt"
    category: Name
    evidence_refs: list[Text] = Field(default_factory=list, max_length=LIMITS.max_list_items)
    description: Text = ""


class SuggestedPatch(Strict):
    description: Text = ""
    patch_content: str = Field("", max_length=LIMITS.max_params_bytes)
    files_affected: list[Text] = Field(default_factory=list, max_length=LIMITS.max_list_items)


class BuilderResult(Strict):
    phase_id: Name
    run_id: Name
    run_type: Name = "project_build"
    allowed_paths: list[Text] = Field(default_factory=list, max_length=LIMITS.max_list_items)
    patch_content: str | None = Field(None, max_length=LIMITS.max_params_bytes)
    files_changed: list[Text] = Field(default_factory=list, max_length=10_000)
    lines_added: int = Count
    lines_removed: int = Count
    builder_attempts: int = Field(1, ge=0, le=LIMITS.max_int)
    tokens_used: int = Count
    duration_minutes: float = Field(0.0, ge=0, le=LIMITS.max_duration_s / 60)
    probe_results: list[ProbeResult] = Field(default_factory=list, max_length=LIMITS.max_list_items)
    suggested_issues: list[IssueFound] = Field(
        default_factory=list, max_length=LIMITS.max_list_items
    )
    status: Literal["success", "failed", "needs_review"]
    notes: Text = ""


class AuditorResult(Strict):
    phase_id: Name
    run_id: Name
    review_notes: Text
    issues_found: list[IssueFound] = Field(default_factory=list, max_length=LIMITS.max_list_items)
    suggested_patches: list[SuggestedPatch] = Field(
        default_factory=list, max_length=LIMITS.max_list_items
    )
    auditor_attempts: int = Field(1, ge=0, le=LIMITS.max_int)
    tokens_used: int = Count
    recommendation: Recommendation
    confidence: Literal["low", "medium", "high"] = "medium"


class PhaseStatusUpdate(Strict):
    state: PhaseState
    builder_attempts: int | None = Field(None, ge=0, le=LIMITS.max_int)
    tokens_used: int | None = Field(None, ge=0, le=LIMITS.max_int)
    minor_issues_count: int | None = Field(None, ge=0, le=LIMITS.max_int)
    major_issues_count: int | None = Field(None, ge=0, le=LIMITS.max_int)
    quality_level: Literal["ok", "needs_review", "blocked"] | None = None
    quality_blocked: bool | None = None


class IssueReport(Strict):
    """`record_issue`: its scalars come as query parameters, `evidence_refs` as the body."""

    issue_key: Name
    severity: Severity
    source: Source
    category: Name
    task_category: Name | None = None
    complexity: Name | None = None
    evidence_refs: list[Text] = Field(default_factory=list, max_length=LIMITS.max_list_items)


class PhaseCall(BaseModel):
    """An executor's call on one phase, as the workflow's Updates take it."""

    phase_id: str
    builder: BuilderResult | None = None
    auditor: AuditorResult | None = None
    status: PhaseStatusUpdate | None = None
    issue: IssueReport | None = None


class PhaseAnswer(BaseModel):
    message: str
    phase_id: str
    run_id: str
    phase_state: str
