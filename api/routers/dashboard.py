"""`/dashboard/*`: the build system's dashboard, served where its contract puts it. A run's
status, token usage by provider and model, model overrides, human notes, and consolidated
token metrics behind their kill switch. Reads take `runs:read`, writes `runs:write`."""

from __future__ import annotations

import asyncio
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from api import model_overrides, token_usage
from api.deps import SessionDep, SettingsDep
from api.errors import ApiError, ErrorBody, now_iso
from api.model_overrides import ModelMapping, ModelOverrideIn, OverrideSet
from api.route import strict_router
from api.run_models import PathId, Reader, Writer, load_run, run_response
from api.token_usage import Period, UsageResponse, percent
from settings import LIMITS, Settings
from store import events
from store.models import Event
from strict import Name, Strict, Text

router = strict_router(
    prefix="/dashboard",
    tags=["runs"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)

NOTES_FILE = "human_notes.md"  # in the data directory


class DashboardRunStatus(BaseModel):
    run_id: str
    state: str
    current_tier_name: str | None
    current_phase_name: str | None = Field(description="First phase by index not yet passed")
    current_tier_index: int | None
    current_phase_index: int | None
    total_tiers: int
    total_phases: int
    completed_tiers: int
    completed_phases: int
    percent_complete: float
    tiers_percent_complete: float
    phases_by_state: dict[str, int]
    tokens_used: int
    token_cap: int
    token_utilization: float = Field(description="Percent of the token cap used")
    minor_issues_count: int
    major_issues_count: int


class HumanNoteIn(Strict):
    note: Annotated[Text, Field(min_length=1)]
    run_id: Name | None = Field(None, description="Also appended to this run's event log")
    author: Name | None = Field(None, description="Default: the token's name")


class NoteAdded(BaseModel):
    message: str
    timestamp: str
    notes_file: str


class ConsolidatedMetrics(BaseModel):
    run_id: str
    total_tokens_spent: int = Field(description="1. What the run's builders and auditors spent")
    total_prompt_tokens: int
    total_completion_tokens: int
    doctor_tokens_spent: int
    artifact_tokens_avoided: int = Field(description="2. Not measured: 0")
    artifact_substitutions_count: int
    doctor_tokens_avoided_estimate: int = Field(description="3. Not measured: 0")
    doctor_calls_skipped_count: int
    ab_delta_tokens_saved: int = Field(description="4. Not measured: 0")
    total_phases: int
    completed_phases: int
    note: str


@router.get("/runs/{run_id}/status", summary="A run's status for the dashboard")
async def run_status(run_id: PathId, _: Reader, session: SessionDep) -> DashboardRunStatus:
    run = await run_response(session, await load_run(session, run_id))
    phases, tiers = run.phases, run.tiers
    current = next((p for p in phases if p.state not in ("COMPLETE", "SKIPPED")), None)
    tier = next((t for t in tiers if current and t.tier_id == current.tier_id), None)
    by_state: dict[str, int] = {}
    for p in phases:
        by_state[p.state] = by_state.get(p.state, 0) + 1
    done = by_state.get("COMPLETE", 0)
    done_tiers = sum(t.state == "COMPLETE" for t in tiers)
    return DashboardRunStatus(
        run_id=run.id,
        state=run.state,
        current_tier_name=tier.name if tier else None,
        current_phase_name=current.name if current else None,
        current_tier_index=tier.tier_index if tier else None,
        current_phase_index=current.phase_index if current else None,
        total_tiers=len(tiers),
        total_phases=len(phases),
        completed_tiers=done_tiers,
        completed_phases=done,
        percent_complete=percent(done, len(phases)),
        tiers_percent_complete=percent(done_tiers, len(tiers)),
        phases_by_state=by_state,
        tokens_used=run.tokens_used,
        token_cap=run.token_cap,
        token_utilization=percent(run.tokens_used, run.token_cap),
        minor_issues_count=sum(p.minor_issues_count for p in phases),
        major_issues_count=sum(p.major_issues_count for p in phases),
    )


@router.get("/usage", summary="Token usage by provider and model")
async def usage(
    _: Reader,
    session: SessionDep,
    period: Annotated[Period, Query(description="`month` is 30 days")] = "week",
) -> UsageResponse:
    """Summed from `tokens_used` events; a provider or model they do not name is `unknown`."""
    return await token_usage.usage(session, period)


@router.get("/models", summary="The model overrides in force")
async def models(
    _: Reader,
    session: SessionDep,
    run_id: Annotated[
        str | None,
        Query(max_length=LIMITS.max_name_chars, description="Only the global ones and this run's"),
    ] = None,
) -> list[ModelMapping]:
    return await model_overrides.mappings(session, run_id)


@router.post("/models/override", summary="Set a model override, for every run or one")
async def override_model(
    body: ModelOverrideIn, principal: Writer, session: SessionDep
) -> OverrideSet:
    if body.run_id is not None:
        await load_run(session, body.run_id)
    row = await model_overrides.save(session, body, principal.name)
    scope = f"run {row.run_id}" if row.run_id else "global"
    return OverrideSet(
        **model_overrides.mapping(row).model_dump(), message=f"{scope} model mapping updated"
    )


def _append_note(path: FilePath, entry: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write in append mode: notes from several API processes do not interleave.
    with path.open("a", encoding="utf-8") as file:
        file.write(entry)


@router.post("/human-notes", summary="Add a human note")
async def human_note(
    body: HumanNoteIn, principal: Writer, session: SessionDep, settings: SettingsDep
) -> NoteAdded:
    """Appended to `human_notes.md` in the data directory, and to the run's event log as a
    `human_note` event when it names a run."""
    if body.run_id is not None:
        await load_run(session, body.run_id)
    author = body.author or principal.name
    timestamp = now_iso()
    entry = f"\n## {timestamp}\n**Author:** {author}\n"
    if body.run_id is not None:
        entry += f"**Run:** {body.run_id}\n"
    try:
        await asyncio.to_thread(
            _append_note, settings.data_dir / NOTES_FILE, f"{entry}{body.note}\n"
        )
    except OSError as exc:
        raise ApiError(
            503, "NOTES_UNWRITABLE", f"the notes file cannot be written: {exc.strerror}"
        ) from None
    if body.run_id is not None:
        await events.append(
            session, "run", body.run_id, "human_note", message=body.note, payload={"author": author}
        )
        await session.commit()
    return NoteAdded(message="Note added successfully", timestamp=timestamp, notes_file=NOTES_FILE)


async def _metrics_enabled(_: Reader, settings: SettingsDep) -> Settings:
    # Its own dependency, asking for the token first: no token is still a 401, and a
    # switched-off endpoint is a 503 before its query is checked.
    if not settings.enable_consolidated_metrics:
        raise ApiError(
            503,
            "KILL_SWITCH_OFF",
            "consolidated metrics are off: set PILOTHOUSE_ENABLE_CONSOLIDATED_METRICS=true",
        )
    return settings


@router.get(
    "/runs/{run_id}/consolidated-metrics",
    summary="A run's token metrics, in four separate categories",
    responses={503: {"model": ErrorBody, "description": "The kill switch is off"}},
)
async def consolidated_metrics(
    run_id: PathId,
    _: Annotated[Settings, Depends(_metrics_enabled)],
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=LIMITS.max_int)] = 0,
) -> ConsolidatedMetrics:
    """Behind the `enable_consolidated_metrics` kill switch (off by default: 503).
    `total_tokens_spent` is the run's own count; its prompt and completion split comes from
    its `tokens_used` events. `limit` and `offset` are checked for the contract; one run's
    metrics are one object, so nothing is paged."""
    run = await run_response(session, await load_run(session, run_id))
    split = await token_usage.by_model(session, Event.resource_id == run_id)
    return ConsolidatedMetrics(
        run_id=run_id,
        total_tokens_spent=run.tokens_used,
        total_prompt_tokens=sum(m.prompt_tokens for m in split),
        total_completion_tokens=sum(m.completion_tokens for m in split),
        doctor_tokens_spent=0,
        artifact_tokens_avoided=0,
        artifact_substitutions_count=0,
        doctor_tokens_avoided_estimate=0,
        doctor_calls_skipped_count=0,
        ab_delta_tokens_saved=0,
        total_phases=len(run.phases),
        completed_phases=sum(p.state == "COMPLETE" for p in run.phases),
        note="Pilothouse does not measure artifact substitutions, doctor calls or A/B deltas: "
        "those categories are 0.",
    )
